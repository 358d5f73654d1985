//! The portal redirect's answer to a request head from a LAN host
//! (`portal_redirect::answer`), for a pay-per-site portal. Whatever the
//! head, the answer is a `302` to one of the signed config's URLs or a
//! `400`, with exactly the responder's own header lines (nothing from the
//! request can add one) and a body as long as its `Content-Length`.
#![no_main]

use isdf_agent::portal_redirect::{answer, MAX_HEAD_BYTES};
use isdf_agent_fuzz::router::portal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|head: &[u8]| {
    let head = &head[..head.len().min(MAX_HEAD_BYTES)];
    let portal = portal();
    let response = answer(head, &portal);
    let text = String::from_utf8(response).expect("answers are text");
    let (top, body) = text.split_once("\r\n\r\n").expect("an answer has a head");
    let mut lines = top.split("\r\n");
    let status = lines.next().expect("a status line");
    let headers: Vec<&str> = lines.collect();
    let length = headers
        .iter()
        .find_map(|h| h.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse::<usize>()
        .expect("a length");
    assert!(body.is_empty() || body.len() == length, "{text}");
    match status {
        "HTTP/1.1 302 Found" => {
            assert_eq!(headers.len(), 5, "{text}");
            let location = headers[0]
                .strip_prefix("Location: ")
                .expect("a Location first");
            let known = std::iter::once(&portal.default_url)
                .chain(portal.sites.iter().map(|s| &s.url))
                .any(|url| url == location);
            assert!(
                known,
                "redirected to {location}, not one of the config's URLs"
            );
        }
        "HTTP/1.1 400 Bad Request" => assert_eq!(headers.len(), 4, "{text}"),
        other => panic!("answered {other}"),
    }
});
