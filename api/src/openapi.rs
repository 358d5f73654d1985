//! OpenAPI schemas of the wire types whose serde is written by hand (text
//! forms), for the controller's device API document. Built only with the
//! `openapi` feature, which the controller enables and the agent does not.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::net::{PortRange, Prefix};
use crate::wireguard::WgKey;

fn text(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

impl PartialSchema for Prefix {
    fn schema() -> RefOr<Schema> {
        text(
            "An IPv4 or IPv6 prefix (`192.0.2.0/24`, `2001:db8::/32`) or a bare address; \
             host bits must be zero.",
        )
        .into()
    }
}

impl ToSchema for Prefix {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Prefix")
    }
}

impl PartialSchema for PortRange {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some("A port (0-65535) or an inclusive range `first-last`."))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(65535)),
            )
            .item(ObjectBuilder::new().schema_type(Type::String))
            .into()
    }
}

impl ToSchema for PortRange {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PortRange")
    }
}

impl PartialSchema for WgKey {
    fn schema() -> RefOr<Schema> {
        // Exactly the 32-byte keys standard base64 decodes: 43 digits (the
        // last with its two unused bits zero) and one `=`.
        text("A Curve25519 public key, base64 as WireGuard writes it (44 characters).")
            .pattern(Some("^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))
            .into()
    }
}

impl ToSchema for WgKey {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("WgKey")
    }
}
