//! Built-in core objects.

use crate::model::ObjectModel;

/// The core object models compiled into the crate.
pub fn core_models() -> Vec<ObjectModel> {
    Vec::new()
}
