//! The platform's time (docs/protocol.md §13): once connected the driver subscribes to the
//! response topic and asks at QoS 0; the reply sets the [`Clock`]'s wall time, so every
//! later TLS connection (the HTTPS download, the next session) checks certificate dates. The
//! first connection after power-on cannot: the time comes over it.

use alloc::string::String;
use alloc::vec::Vec;

use ota_core::ntp::{self, NtpError, TimeRequest};
use ota_core::{DeviceIdentity, Instant, Qos};

use crate::clock::Clock;
use crate::transport::MqttTransport;

/// The time request of one device: its topics and the request in flight.
pub(crate) struct TimeSync {
    request: TimeRequest,
    request_topic: String,
    response_topic: String,
    payload: Vec<u8>,
}

impl TimeSync {
    pub(crate) fn new(id: &DeviceIdentity) -> Self {
        TimeSync {
            request: TimeRequest::default(),
            request_topic: ntp::request_topic(id),
            response_topic: ntp::response_topic(id),
            payload: Vec::new(),
        }
    }

    /// Subscribes to the reply topic, then asks (the broker handles the two in order, so the
    /// reply finds the subscription).
    pub(crate) async fn ask<M: MqttTransport>(
        &mut self,
        mqtt: &mut M,
        now: Instant,
    ) -> Result<(), M::Error> {
        mqtt.subscribe(&self.response_topic).await?;
        self.payload.clear();
        self.request.start(now.as_millis(), &mut self.payload);
        mqtt.publish(&self.request_topic, &self.payload, Qos::AtMostOnce)
            .await
    }

    /// Whether a message on `topic` is the time reply (and not for the agent).
    pub(crate) fn is_reply(&self, topic: &str) -> bool {
        topic == self.response_topic
    }

    /// Sets `clock` from a reply to the request in flight; other replies change nothing.
    pub(crate) fn handle<C: Clock>(&mut self, payload: &[u8], clock: &C) -> Result<(), NtpError> {
        let now = clock.now();
        let unix_ms = self.request.handle_response(payload, now.as_millis())?;
        clock.set_unix_time(unix_ms, now);
        Ok(())
    }
}
