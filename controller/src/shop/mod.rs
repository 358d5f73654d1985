//! Selling `pay-per-site` passes: recording and cancelling them (the one
//! writer of `purchases`, used by the operator API, the billing webhook and
//! the customer portal), the payment providers the portal charges through,
//! the billing webhook's signatures, and the portal's HTML pages. What a
//! pass does on a router is `crate::services::pay_per_site`.

pub mod billing_webhook;
pub mod payment;
pub mod portal_page;
pub mod purchases;
