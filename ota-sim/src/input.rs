//! What the world's engine thread reacts to: the one channel that the broker, the MQTT fronts
//! and the `Sim` handle send into. It lives apart from the world so that the senders depend
//! on this module only, not on the world they feed.

use crate::model::DeviceId;

/// What the engine thread reacts to.
pub(crate) enum Input {
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// A login checked out; whether it came over TLS.
    Login(DeviceId, bool),
    /// A device's MQTT connection through a front was accepted.
    Connected(DeviceId),
    /// That connection ended.
    Disconnected(DeviceId),
    Wake,
    Stop,
}
