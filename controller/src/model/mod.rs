//! The controller's pure vocabulary: types that parse rather than validate
//! (labels, selectors, names, roles). A value of these types is always
//! valid. No I/O here.

pub mod labels;
pub mod names;
pub mod role;

pub use labels::{Labels, Requirement, Selector};
pub use names::{parse_name, parse_reference, DisplayName};
pub use role::Role;
