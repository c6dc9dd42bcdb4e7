//! What changing an environment takes (see [`crate::Store::update_environment`]).

/// A change to an environment's settings: the fields given change, the others stay as they
/// are. There is no key: an environment's key never changes, since SDK keys' scope, URLs and
/// telemetry name the environment by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentUpdate {
    pub name: Option<String>,
    /// Writes by editors become change requests.
    pub requires_approval: Option<bool>,
    /// Every change must carry a comment.
    pub requires_comment: Option<bool>,
    /// The display position, counted from 0: the environments between the old and the new
    /// position move by one to make room, keeping their order.
    pub position: Option<i64>,
}
