//! Signed portal links: the URLs a gated router sends a browser to, naming
//! the router and the site with an HMAC only the controller can make
//! (`<data-dir>/portal.key`). Pure: the key is an input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Links to the customer-facing portal that name a router and a site, with
/// an HMAC only the controller can make: a LAN host sees the links of its
/// own router only and cannot make one naming another router or site.
#[derive(Clone)]
pub struct PortalLinks {
    base_url: String,
    key: [u8; 32],
}

impl std::fmt::Debug for PortalLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalLinks")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl PortalLinks {
    pub fn new(base_url: &str, key: [u8; 32]) -> Self {
        PortalLinks {
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn signature(&self, device: &str, site: Option<i64>) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        let site = site.map_or_else(String::new, |s| s.to_string());
        mac.update(format!("isdf-portal-v1|{device}|{site}").as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
    }

    /// The path and query of the portal page for `site` on `device`.
    pub fn site_path(&self, device: &str, site: i64) -> String {
        format!(
            "/p/{device}/{site}?sig={}",
            self.signature(device, Some(site))
        )
    }

    pub fn site_url(&self, device: &str, site: i64) -> String {
        format!("{}{}", self.base_url, self.site_path(device, site))
    }

    /// The portal page listing every site for `device`.
    pub fn device_url(&self, device: &str) -> String {
        format!(
            "{}/p/{device}?sig={}",
            self.base_url,
            self.signature(device, None)
        )
    }

    /// Whether `signature` is the controller's for this device and site
    /// (None: the device's page). Constant time.
    pub fn verify(&self, device: &str, site: Option<i64>, signature: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        let site = site.map_or_else(String::new, |s| s.to_string());
        mac.update(format!("isdf-portal-v1|{device}|{site}").as_bytes());
        given.len() == 16 && mac.verify_truncated_left(&given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_links_verify_only_their_device_and_site() {
        let links = PortalLinks::new("https://portal.example/", [7; 32]);
        let url = links.site_url("dev-a", 3);
        assert!(url.starts_with("https://portal.example/p/dev-a/3?sig="));
        let sig = url.rsplit_once("sig=").unwrap().1;
        assert!(links.verify("dev-a", Some(3), sig));
        assert!(!links.verify("dev-b", Some(3), sig));
        assert!(!links.verify("dev-a", Some(4), sig));
        assert!(!links.verify("dev-a", None, sig));
        assert!(!links.verify("dev-a", Some(3), &sig[..sig.len() - 1]));
        assert!(!links.verify("dev-a", Some(3), "not base64!"));
        let other_key = PortalLinks::new("https://portal.example", [8; 32]);
        assert!(!other_key.verify("dev-a", Some(3), sig));
        let device = links.device_url("dev-a");
        assert!(links.verify("dev-a", None, device.rsplit_once("sig=").unwrap().1));
    }
}
