//! The portal's HTML: small self-contained pages (no scripts from
//! elsewhere, no Node toolchain) that read well on a phone. Everything
//! operator- or customer-provided is escaped here.

use std::fmt::Write as _;

/// A pass as the page offers it.
pub struct PassOffer {
    pub duration_secs: i64,
    /// Minor units.
    pub price: i64,
}

/// The site page: what the site costs and a button per pass.
pub struct SitePage<'a> {
    pub site_name: &'a str,
    pub domain: &'a str,
    pub currency: &'a str,
    pub passes: &'a [PassOffer],
    /// Where each pass's form posts to (path with the signature).
    pub buy_action: &'a str,
    /// Unix seconds the household's current pass ends, if it has one.
    pub current_pass_ends: Option<i64>,
    pub provider: &'a str,
    /// Identifies this rendering: a resubmitted form is one payment.
    pub form_nonce: &'a str,
}

/// The page shown after paying, until the router reports the site open.
pub struct WaitPage<'a> {
    pub site_name: &'a str,
    pub site_url: &'a str,
    /// Long-polled by the page's script (JSON `{"open": bool}`).
    pub open_url: &'a str,
}

pub use isdf_api::dns::escape_html as escape;

/// `1,234.50 EUR` from minor units (two decimals).
pub fn price(minor: i64, currency: &str) -> String {
    format!(
        "{}.{:02} {}",
        minor / 100,
        (minor % 100).abs(),
        escape(currency)
    )
}

/// `30 minutes`, `1 hour`, `1 day 12 hours`.
pub fn duration(secs: i64) -> String {
    let units = [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        let n = rest / size;
        if n > 0 && parts.len() < 2 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        }
        rest %= size;
    }
    if parts.is_empty() {
        "0 seconds".into()
    } else {
        parts.join(" ")
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2733}}\
         main{{max-width:28rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:12px;\
         box-shadow:0 1px 4px #0002}}h1{{font-size:1.4rem;margin:0 0 .25rem}}\
         .muted{{color:#5b6b7b;font-size:.9rem}}form{{display:flex;justify-content:space-between;\
         align-items:center;border-top:1px solid #e3e8ee;padding:.75rem 0}}\
         button,a.button{{background:#0b63ce;color:#fff;border:0;border-radius:8px;padding:.6rem 1rem;\
         font-size:1rem;text-decoration:none}}.note{{background:#eef6ee;padding:.75rem;border-radius:8px}}\
         </style></head><body><main>{body}</main></body></html>",
        title = escape(title),
    )
}

pub fn site_page(p: &SitePage<'_>) -> String {
    let mut body = format!(
        "<h1>{}</h1><p class=\"muted\">{} is available on your connection with a pass.</p>",
        escape(p.site_name),
        escape(p.domain)
    );
    if let Some(end) = p.current_pass_ends {
        let _ = write!(
            body,
            "<p class=\"note\">Your household has a pass until \
             <time data-unix=\"{end}\">{}</time> (UTC). A new pass starts when it ends. \
             <a href=\"http://{}/\">Continue to the site</a></p>",
            chrono::DateTime::from_timestamp(end, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default(),
            escape(p.domain)
        );
    }
    for pass in p.passes {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{action}\">\
             <input type=\"hidden\" name=\"duration_secs\" value=\"{secs}\">\
             <input type=\"hidden\" name=\"nonce\" value=\"{nonce}\">\
             <span><strong>{duration}</strong><br><span class=\"muted\">{price}</span></span>\
             <button type=\"submit\">Buy</button></form>",
            action = escape(p.buy_action),
            secs = pass.duration_secs,
            nonce = escape(p.form_nonce),
            duration = duration(pass.duration_secs),
            price = price(pass.price, p.currency),
        );
    }
    let _ = write!(
        body,
        "<p class=\"muted\">Payments by {}. The pass is for every device of your household.</p>",
        escape(p.provider)
    );
    page(p.site_name, &body)
}

pub fn wait_page(p: &WaitPage<'_>) -> String {
    let body = format!(
        "<h1>{name}</h1><p id=\"state\">Payment received. Opening {name} on your router&hellip;</p>\
         <p><a class=\"button\" href=\"{site}\">Continue to the site</a></p>\
         <script>\
         const openUrl={open_json};const siteUrl={site_json};\
         async function wait(){{for(let i=0;i<30;i++){{try{{\
         const r=await fetch(openUrl,{{cache:'no-store'}});const j=await r.json();\
         if(j.open){{location.href=siteUrl;return}}}}catch(e){{await new Promise(d=>setTimeout(d,1000))}}}}\
         document.getElementById('state').textContent='Your router has not confirmed yet; try the link below.'}}\
         wait();</script>",
        name = escape(p.site_name),
        site = escape(p.site_url),
        open_json = script_string(p.open_url),
        site_json = script_string(p.site_url),
    );
    page(p.site_name, &body)
}

/// A JSON string literal that is safe inside a `<script>` element.
fn script_string(text: &str) -> String {
    serde_json::to_string(text)
        .expect("strings serialise")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The router's page: a link per gated site (domain, portal URL).
pub fn device_page(sites: &[(String, String)]) -> String {
    let mut body = String::from(
        "<h1>Sites with passes</h1><p class=\"muted\">These sites open on your connection with a pass.</p>",
    );
    for (domain, url) in sites {
        let _ = write!(
            body,
            "<form><span><strong>{}</strong></span><a class=\"button\" href=\"{}\">Passes</a></form>",
            escape(domain),
            escape(url)
        );
    }
    if sites.is_empty() {
        body.push_str("<p>No site needs a pass on your connection.</p>");
    }
    page("Sites with passes", &body)
}

pub fn message_page(title: &str, message: &str) -> String {
    page(
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_text_is_escaped() {
        let html = site_page(&SitePage {
            site_name: "<script>alert(1)</script>",
            domain: "video.test",
            currency: "EUR",
            passes: &[PassOffer {
                duration_secs: 3600,
                price: 250,
            }],
            buy_action: "/p/d/1/buy?sig=a\"b",
            current_pass_ends: None,
            provider: "test",
            form_nonce: "n",
        });
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("sig=a&quot;b"));
        assert!(html.contains("1 hour") && html.contains("2.50 EUR"));
        let wait = wait_page(&WaitPage {
            site_name: "x",
            site_url: "http://video.test/</script>",
            open_url: "/p/d/1/open",
        });
        assert!(!wait.contains("/</script>\""));
    }

    #[test]
    fn durations_and_prices_read_naturally() {
        assert_eq!(duration(60), "1 minute");
        assert_eq!(duration(90 * 60), "1 hour 30 minutes");
        assert_eq!(duration(86_400 * 7), "7 days");
        assert_eq!(price(199, "EUR"), "1.99 EUR");
        assert_eq!(price(100_000, "USD"), "1000.00 USD");
    }
}
