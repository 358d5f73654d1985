//! The customer-facing portal against the real controller: signed links,
//! the site page, paying (once per form), the config the household's router
//! gets, and waiting until the router reports it enforced.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{DeviceHandle, Harness};

struct Shop {
    h: Harness,
    device_id: String,
    device: DeviceHandle,
    site_id: i64,
    customer: String,
}

async fn shop() -> Shop {
    let h = Harness::start().await;
    let (device_id, device) = h.device("home-1", json!({})).await;
    let site = h
        .post(
            "/api/v1/sites",
            json!({"catalog": "main", "name": "Video <HD>", "domains": ["video.test", "*.vcdn.test"],
                   "currency": "EUR", "passes": [{"duration_secs": 3600, "price": 250},
                                                  {"duration_secs": 86400, "price": 900}]}),
        )
        .await;
    assert_eq!(site.status, StatusCode::CREATED, "{}", site.body);
    let customer = h
        .post(
            "/api/v1/customers",
            json!({"name": "household-1", "devices": [device_id]}),
        )
        .await;
    assert_eq!(customer.status, StatusCode::CREATED, "{}", customer.body);
    let service = h
        .post(
            "/api/v1/services",
            json!({"name": "pps", "kind": "pay-per-site", "spec": {"catalog": "main"}}),
        )
        .await;
    h.assign(service.body["id"].as_str().unwrap(), "*").await;
    Shop {
        device_id,
        device,
        site_id: site.body["id"].as_i64().unwrap(),
        customer: customer.body["id"].as_str().unwrap().to_owned(),
        h,
    }
}

async fn config(h: &Harness, device: &str) -> (u64, Value) {
    let r = h.get(&format!("/api/v1/devices/{device}/config")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    (
        r.body["version"].as_u64().unwrap(),
        r.body["config"].clone(),
    )
}

fn rule_ids(config: &Value) -> Vec<String> {
    config["firewall"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in {text}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    text[from..from + len].to_owned()
}

#[tokio::test]
async fn a_customer_pays_once_and_the_router_gets_the_pass() {
    let Shop {
        h,
        device_id,
        device,
        site_id,
        customer,
    } = shop().await;
    let (_, before) = config(&h, &device_id).await;
    let site_url = before["firewall"]["portal"]["sites"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        site_url.starts_with(&format!(
            "{}/p/{device_id}/{site_id}?sig=",
            h.controller.portal_url
        )),
        "{site_url}"
    );
    assert!(rule_ids(&before).contains(&format!("pps{site_id}-gate-v4")));
    assert!(!rule_ids(&before).iter().any(|id| id.contains("-pass-")));

    let http = no_redirects();
    // Tampered or borrowed links are refused.
    let sig = site_url.rsplit_once("sig=").unwrap().1.to_owned();
    let portal = &h.controller.portal_url;
    for bad in [
        format!("{portal}/p/{device_id}/{site_id}?sig=AAAA{}", &sig[4..]),
        format!("{portal}/p/{device_id}/{}?sig={sig}", site_id + 1),
        format!("{portal}/p/{}/{site_id}?sig={sig}", uuid::Uuid::new_v4()),
        format!("{portal}/p/{device_id}?sig={sig}"),
    ] {
        let r = http.get(&bad).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad}");
    }

    // The page: name (escaped), passes and prices.
    let page = http.get(&site_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Video &lt;HD&gt;") && !html.contains("<HD>"),
        "{html}"
    );
    assert!(html.contains("2.50 EUR") && html.contains("9.00 EUR") && html.contains("1 day"));
    let action = between(&html, "action=\"", "\"").replace("&amp;", "&");
    let nonce = between(&html, "name=\"nonce\" value=\"", "\"");

    // Paying: a form for the hour pass; submitted twice, charged and recorded once.
    let mut waits = Vec::new();
    for _ in 0..2 {
        let bought = http
            .post(format!("{portal}{action}"))
            .form(&[("duration_secs", "3600"), ("nonce", nonce.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(bought.status(), StatusCode::SEE_OTHER);
        waits.push(bought.headers()["location"].to_str().unwrap().to_owned());
    }
    let purchases = h
        .get(&format!("/api/v1/purchases?customer_id={customer}"))
        .await;
    let items = purchases.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", purchases.body);
    assert_eq!(items[0]["source"], "portal");
    let ends_at = chrono::DateTime::parse_from_rfc3339(items[0]["ends_at"].as_str().unwrap())
        .unwrap()
        .timestamp();

    // The router's config now opens the site until the pass ends.
    let (version, after) = config(&h, &device_id).await;
    let pass = after["firewall"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == format!("pps{site_id}-pass-v4"))
        .expect("a pass rule")
        .clone();
    assert_eq!(pass["match"]["until"], json!(ends_at));
    assert!(
        waits[0].ends_with(&format!("&version={version}")),
        "{}",
        waits[0]
    );

    // The wait page long-polls `open` until the router reports the version.
    let wait_page = http
        .get(format!("{portal}{}", waits[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open_url = between(&wait_page, "const openUrl=\"", "\"").replace("\\u0026", "&");
    let waiting = tokio::spawn({
        let url = format!("{portal}{open_url}");
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "open waits for the router");
    let report = json!({"sequence": 1, "enforced_version": version, "enforced_digest": "x",
        "outcome": "applied", "attempted_version": version, "backend": "nftables", "agent_version": "t"});
    let posted = device
        .http
        .post(device.url(isdf_api::paths::DEVICE_STATUS))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::NO_CONTENT);
    let opened = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("open answers once the router reports")
        .unwrap();
    assert_eq!(opened, json!({"open": true, "url": "http://video.test/"}));

    // The router's page lists its gated sites.
    let device_url = after["firewall"]["portal"]["default_url"].as_str().unwrap();
    let listing = http
        .get(device_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("video.test"), "{listing}");
    // Back on the site page, the household's pass shows.
    let again = http
        .get(&site_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.contains("Your household has a pass until"), "{again}");

    // Charges are rate limited per router: bursts of five (two used above).
    let mut statuses = Vec::new();
    for n in 0..4 {
        let bought = http
            .post(format!("{portal}{action}"))
            .form(&[("duration_secs", "3600"), ("nonce", &format!("n{n}"))])
            .send()
            .await
            .unwrap();
        statuses.push(bought.status().as_u16());
    }
    assert_eq!(statuses, [303, 303, 303, 429]);
    let purchases = h
        .get(&format!("/api/v1/purchases?customer_id={customer}"))
        .await;
    assert_eq!(purchases.body["items"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_router_without_a_household_cannot_buy() {
    let Shop { h, site_id, .. } = shop().await;
    let (other, _) = h.device("loose-router", json!({})).await;
    let (_, config) = config(&h, &other).await;
    let url = config["firewall"]["portal"]["sites"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.contains(&format!("/{site_id}?sig=")));
    let r = no_redirects().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("not linked"));
    let bought = no_redirects()
        .post(url.replacen("?sig=", "/buy?sig=", 1))
        .form(&[("duration_secs", "3600"), ("nonce", "abc")])
        .send()
        .await
        .unwrap();
    assert_eq!(bought.status(), StatusCode::CONFLICT);
    assert_eq!(h.get("/api/v1/purchases").await.body["items"], json!([]));
}
