//! The MQTT transport the driver needs: connect with a login, subscribe, publish, receive.
//! [`crate::mqtt::MqttClient`] implements it over any [`crate::Connect`] (plain TCP or TLS);
//! a firmware with its own MQTT client (MQTT 5, a modem's AT client) implements it instead.

use core::fmt::Debug;

use ota_core::Qos;

use crate::login::Login;

/// One application message received on a subscribed topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
}

/// An MQTT session for the agent: QoS 1 subscriptions, and publishes at the agent's QoS, to
/// one broker.
///
/// Errors of any operation mean the session is lost: the driver reports `Disconnected` to
/// the agent and calls [`MqttTransport::connect`] again later.
#[allow(async_fn_in_trait)] // firmware executors are single-threaded: no `Send` bound needed
pub trait MqttTransport {
    /// What went wrong.
    type Error: Debug;

    /// (Re)opens the session: TCP (or TLS) connect, CONNECT with a clean session, CONNACK.
    async fn connect(&mut self, login: &Login) -> Result<(), Self::Error>;

    /// Subscribes at QoS 1. May return before the SUBACK; a refusal surfaces as an error
    /// of a later call.
    async fn subscribe(&mut self, topic: &str) -> Result<(), Self::Error>;

    /// Publishes at `qos`: [`Qos::AtMostOnce`] (MQTT-channel block requests, which the agent
    /// repeats itself) is sent without a packet identifier and never waited for;
    /// [`Qos::AtLeastOnce`] may return before its PUBACK, which [`MqttTransport::disconnect`]
    /// waits for.
    async fn publish(&mut self, topic: &str, payload: &[u8], qos: Qos) -> Result<(), Self::Error>;

    /// Waits for the next application message. Must be cancel-safe: the driver races it
    /// against timers and other I/O and drops it when they win; no received byte may be lost.
    async fn receive(&mut self) -> Result<Message<'_>, Self::Error>;

    /// Ends the session cleanly once the broker acknowledged every publish, so that the
    /// last reports survive the reboot that follows. The driver bounds it with a timeout.
    async fn disconnect(&mut self) -> Result<(), Self::Error>;

    /// Tells the broker the session is alive (PINGREQ). The driver calls it every half
    /// keep-alive interval.
    async fn ping(&mut self) -> Result<(), Self::Error>;
}
