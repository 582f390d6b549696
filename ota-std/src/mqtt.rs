//! The MQTT session: rumqttc's connection is iterated on its own thread (it must be polled
//! continuously for keep-alives and acks) and forwards what matters to the agent thread. It
//! reconnects with back-off; the agent re-subscribes and re-informs on every `Connected`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rumqttc::{
    Client, ConnectionError, Event, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration,
    Transport,
};

use crate::input::Input;
use crate::login::Login;
use crate::Error;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub(crate) struct MqttSettings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) login: Login,
    pub(crate) tls: Option<TlsConfiguration>,
    pub(crate) keep_alive: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// Give up (with one clear error) if the very first connection fails.
    pub(crate) fail_fast: bool,
    /// Largest incoming packet (rumqttc's default, 10 KiB, is below an MQTT-channel block).
    pub(crate) max_incoming: usize,
}

/// QoS 1 publishes not yet acknowledged, so a reboot can wait for the last reports.
#[derive(Default)]
struct Unacked {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Unacked {
    fn add(&self, delta: isize) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_add_signed(delta);
        self.changed.notify_all();
    }
}

/// Set when the connection thread ended, after its socket was dropped.
#[derive(Default)]
struct Closed {
    done: Mutex<bool>,
    changed: Condvar,
}

/// Marks the session closed when the connection thread ends, however it ends.
struct ClosedOnDrop(Arc<Closed>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        *self.0.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.changed.notify_all();
    }
}

/// A running session. [`Mqtt::close`] ends it and waits; dropping it only asks to end it.
pub(crate) struct Mqtt {
    client: Client,
    stop: Arc<AtomicBool>,
    unacked: Arc<Unacked>,
    closed: Arc<Closed>,
    /// Wakes the thread out of a back-off wait (and does so when dropped with `Mqtt`).
    wake: Sender<()>,
}

/// Largest outgoing MQTT packet: reports and block requests are small.
const MAX_OUTGOING: usize = 64 * 1024;

impl Mqtt {
    pub(crate) fn start(settings: MqttSettings, inputs: Sender<Input>) -> Result<Mqtt, Error> {
        let mut options = MqttOptions::new(
            settings.login.client_id.clone(),
            settings.host.clone(),
            settings.port,
        );
        options
            .set_credentials(
                settings.login.username.clone(),
                settings.login.password.clone(),
            )
            .set_keep_alive(settings.keep_alive)
            .set_max_packet_size(settings.max_incoming, MAX_OUTGOING)
            .set_clean_session(true);
        if let Some(tls) = &settings.tls {
            options.set_transport(Transport::tls_with_config(tls.clone()));
        }
        let (client, mut connection) = Client::new(options, 64);
        // Without TCP_NODELAY every QoS 1 round trip waits on Nagle and delayed ACKs.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);

        let stop = Arc::new(AtomicBool::new(false));
        let (wake, asleep) = mpsc::channel::<()>();
        let thread_stop = stop.clone();
        let unacked = Arc::new(Unacked::default());
        let acks = unacked.clone();
        let closed = Arc::new(Closed::default());
        let closed_guard = ClosedOnDrop(closed.clone());
        std::thread::Builder::new()
            .name("ota-mqtt".into())
            .spawn(move || {
                // Dropped in reverse order: the socket goes with `connection`, then the
                // session counts as closed.
                let _closed = closed_guard;
                let mut connection = connection;
                let mut connected_once = false;
                let mut online = false;
                let mut failures: u32 = 0;
                let mut events = connection.iter();
                loop {
                    // Checked before each poll too: a stopped session must not reconnect.
                    if thread_stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Some(event) = events.next() else {
                        return;
                    };
                    if thread_stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let input = match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected_once = true;
                            online = true;
                            failures = 0;
                            Input::Connected
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acks.add(-1);
                            continue;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => Input::Message {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                        },
                        Ok(_) => continue,
                        Err(e) => {
                            if !connected_once && settings.fail_fast {
                                let line = describe(&settings.host, settings.port, &e);
                                let _ = inputs.send(Input::MqttFatal(line));
                                return;
                            }
                            if online {
                                online = false;
                                if inputs.send(Input::Disconnected(e.to_string())).is_err() {
                                    return;
                                }
                            }
                            tracing::debug!("mqtt: {e}");
                            let delay =
                                backoff(settings.reconnect_min, settings.reconnect_max, failures);
                            failures = failures.saturating_add(1);
                            match asleep.recv_timeout(delay) {
                                Err(RecvTimeoutError::Timeout) => continue,
                                _ => return,
                            }
                        }
                    };
                    if inputs.send(input).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Io(format!("cannot start the MQTT thread: {e}")))?;
        Ok(Mqtt {
            client,
            stop,
            unacked,
            closed,
            wake,
        })
    }

    pub(crate) fn subscribe(&self, topic: &str) {
        if let Err(e) = self.client.try_subscribe(topic, QoS::AtLeastOnce) {
            tracing::warn!("cannot subscribe to {topic}: {e}");
        }
    }

    /// Publishes at the QoS the core asks for.
    pub(crate) fn publish(&self, topic: &str, payload: &[u8], qos: ota_core::Qos) {
        // A full request queue means the link is down for long; the agent re-informs and
        // re-reports what matters on the next connect.
        let qos = match qos {
            ota_core::Qos::AtMostOnce => QoS::AtMostOnce,
            ota_core::Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        // Counted first: the acknowledgement may come back before `try_publish` returns.
        let acknowledged = qos == QoS::AtLeastOnce;
        if acknowledged {
            self.unacked.add(1);
        }
        let result = self.client.try_publish(topic, qos, false, payload.to_vec());
        if let Err(e) = result {
            if acknowledged {
                self.unacked.add(-1);
            }
            tracing::warn!("cannot publish to {topic}: {e}");
        }
    }

    /// Waits (at most `timeout`) until the broker acknowledged every publish, so that the
    /// reports made just before a reboot are not lost with the session.
    pub(crate) fn flush(&self, timeout: Duration) {
        let count = self.unacked.count.lock().unwrap_or_else(|e| e.into_inner());
        let waited = self
            .unacked
            .changed
            .wait_timeout_while(count, timeout, |n| *n > 0);
        if waited.is_ok_and(|(_, result)| result.timed_out()) {
            tracing::warn!("rebooting with unacknowledged reports");
        }
    }
}

impl Mqtt {
    /// Ends the session: waits (at most `timeout` each) for the broker to acknowledge the
    /// last reports, sends DISCONNECT and waits until the connection is closed, so that the
    /// next session of this device never overlaps it (the broker would see its client id
    /// twice). Returns whether the connection closed in time.
    pub(crate) fn close(&self, timeout: Duration) -> bool {
        self.flush(timeout);
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        let _ = self.wake.send(()); // out of a back-off wait, if it is in one
        let done = self.closed.done.lock().unwrap_or_else(|e| e.into_inner());
        let waited = self
            .closed
            .changed
            .wait_timeout_while(done, timeout, |done| !*done);
        let closed = waited.is_ok_and(|(_, result)| !result.timed_out());
        if !closed {
            tracing::warn!("the MQTT connection did not close within {timeout:?}");
        }
        closed
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

/// Exponential back-off with a little jitter, so a fleet does not reconnect in lockstep.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.min(16)).min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    exp + exp / 4 * (nanos % 1000) / 1000
}

/// The rustls error inside a failed TLS connection, wherever rumqttc put it.
fn rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    let io = match e {
        ConnectionError::Tls(rumqttc::TlsError::TLS(tls)) => return Some(tls),
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) | ConnectionError::Io(io) => io,
        _ => return None,
    };
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// One line saying why the first connection failed.
fn describe(host: &str, port: u16, e: &ConnectionError) -> String {
    let endpoint = format!("{host}:{port}");
    if let Some(line) = rustls_error(e).and_then(|tls| crate::tls_session::explain(tls, host, port))
    {
        return format!("TLS with the broker failed: {line}");
    }
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the broker {endpoint} refused the login ({code:?}): check the product key, \
             device name and device secret"
        ),
        ConnectionError::Io(io) => format!("cannot reach the broker {endpoint}: {io}"),
        ConnectionError::NetworkTimeout => format!("cannot reach the broker {endpoint}: timed out"),
        ConnectionError::Tls(tls) => format!("TLS with the broker {endpoint} failed: {tls}"),
        // The simulator (like some brokers) just closes the connection on a bad login.
        ConnectionError::MqttState(state) => format!(
            "the broker {endpoint} closed the connection during login ({state}): check the \
             product key, device name and device secret"
        ),
        other => format!("cannot connect to the broker {endpoint}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert!(backoff(min, max, 0) >= min && backoff(min, max, 0) <= min * 5 / 4);
        assert!(backoff(min, max, 3) >= min * 8);
        assert!(backoff(min, max, 30) <= max * 5 / 4);
    }
}
