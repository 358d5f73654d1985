//! The site-name readers (`isdf_agent::sitename`) on a flow's first bytes:
//! the first input byte picks TLS records, an HTTP head, or a QUIC
//! datagram; the rest is the flow. Whatever the bytes, no panic, and a name
//! found is one the gate can compare: normalised, at most 253 bytes.
#![no_main]

use isdf_agent::sitename::{http, normalise, quic, tls, Sighting, MAX_NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, flow)) = data.split_first() else {
        return;
    };
    let seen = match which % 3 {
        0 => tls::from_records(flow),
        1 => http::host(flow),
        _ => match quic::open_initial(flow) {
            Some(initial) => {
                assert!(initial.dcid.len() <= 20);
                quic::sighting(&initial.crypto)
            }
            None => return,
        },
    };
    if let Sighting::Name { name, .. } = seen {
        assert!(name.len() <= MAX_NAME, "{name}");
        assert_eq!(normalise(name.as_bytes()).as_deref(), Some(name.as_str()));
    }
});
