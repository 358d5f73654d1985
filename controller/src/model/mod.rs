//! The controller's pure vocabulary: types that parse rather than validate
//! (labels, selectors, names, roles; a value of these types is always
//! valid), and pure computations over what routers report (a router's
//! history as rates). No I/O here.

pub mod labels;
pub mod names;
pub mod role;
pub mod router_history;

pub use labels::{Labels, Requirement, Selector};
pub use names::{parse_name, parse_reference, DisplayName};
pub use role::Role;
