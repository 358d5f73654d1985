//! Taking payment for a pass on the portal, behind a small trait: an ISP
//! plugs in its payment service provider; the built-in test provider
//! approves every charge (development and tests).

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

/// What the portal asks a provider to charge.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub customer_id: Uuid,
    pub site_id: i64,
    pub description: String,
    /// Minor units (cents).
    pub amount: i64,
    pub currency: String,
    /// The same key for a resubmitted form: a provider charges it once.
    pub idempotency_key: String,
}

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The provider's id of the payment; purchases are unique by it.
    pub payment_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The provider refused (card declined, limit reached...).
    #[error("payment declined: {0}")]
    Declined(String),
    /// The provider could not be reached or failed.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
}

pub type ChargeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Payment, PaymentError>> + Send + 'a>>;

pub trait PaymentProvider: Send + Sync {
    /// Shown on the portal ("Pay with ...").
    fn name(&self) -> &str;
    fn charge(&self, request: ChargeRequest) -> ChargeFuture<'_>;
}

/// Approves every charge at once; the payment id is derived from the
/// idempotency key, so a resubmitted form is one payment.
#[derive(Debug, Default)]
pub struct TestPaymentProvider;

impl PaymentProvider for TestPaymentProvider {
    fn name(&self) -> &str {
        "test payments (no money moves)"
    }

    fn charge(&self, request: ChargeRequest) -> ChargeFuture<'_> {
        Box::pin(async move {
            if request.amount <= 0 {
                return Err(PaymentError::Declined("nothing to charge".into()));
            }
            Ok(Payment {
                payment_id: format!("test_{}", request.idempotency_key),
            })
        })
    }
}
