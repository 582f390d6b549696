//! The MQTT side: an in-process rumqttd whose CONNECT hook checks the device login, or an
//! external broker reached with rumqttc. Either way the cloud subscribes to the uplink topics,
//! forwards what arrives as [`Input`]s, and sends pushes and replies through a [`Publisher`].

use crate::input::Input;
use crate::messages::CLOUD_FILTERS;
use crate::Error;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{ConnectionSettings, Notification, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which MQTT broker the simulator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerConfig {
    /// rumqttd in this process on the simulator's bind address; port 0 picks a free one.
    Embedded {
        /// TCP port.
        port: u16,
    },
    /// A broker already running, as `mqtt://[user[:password]@]host[:port]`. Device logins are
    /// then that broker's business.
    External {
        /// The broker's URL.
        url: String,
    },
}

/// Login check called by the embedded broker with (client id, username, password).
pub(crate) type LoginCheck = Box<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// Sends cloud messages into the broker.
pub(crate) enum Publisher {
    /// The embedded broker's in-process link (QoS 0, no socket).
    Local(Mutex<LinkTx>),
    /// A client of an external broker.
    Remote(rumqttc::Client),
}

impl Publisher {
    /// Publishes; a failure is logged, as a lost push or block reply is something devices must
    /// survive anyway.
    pub(crate) fn publish(&self, topic: String, payload: Vec<u8>) {
        let result = match self {
            Publisher::Local(link) => match link.lock() {
                Ok(mut link) => link
                    .publish(topic, payload)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(_) => Err("link lock poisoned".to_owned()),
            },
            Publisher::Remote(client) => client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!("publish failed: {e}");
        }
    }
}

/// Asks the OS for a free port. rumqttd binds its listener itself, so the port is released
/// again before rumqttd takes it (a tiny window another process could use).
fn free_port(bind: IpAddr) -> Result<u16, Error> {
    Ok(TcpListener::bind((bind, 0))?.local_addr()?.port())
}

/// Starts rumqttd and the cloud's link into it; returns the address it listens on.
pub(crate) fn start_embedded(
    bind: IpAddr,
    port: u16,
    check: LoginCheck,
    inbound: Sender<Input>,
) -> Result<(SocketAddr, Publisher), Error> {
    let port = if port == 0 { free_port(bind)? } else { port };
    let listen = SocketAddr::new(bind, port);
    let mut server = ServerSettings {
        name: format!("ota-sim-{port}"),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let check = std::sync::Arc::new(check);
    server.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = check(&client_id, &user, &pass);
        async move { ok }
    });
    let config = rumqttd::Config {
        router: RouterConfig {
            // 10,000 devices and the cloud's own link; slots are allocated up front.
            max_connections: 20_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..rumqttd::Config::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    let (mut link_tx, link_rx) = broker
        .link("ota-sim-cloud")
        .map_err(|e| Error::Broker(e.to_string()))?;
    for filter in CLOUD_FILTERS {
        link_tx
            .subscribe(filter)
            .map_err(|e| Error::Broker(e.to_string()))?;
    }
    std::thread::Builder::new()
        .name("ota-sim-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!("broker stopped: {e}");
            }
        })?;
    std::thread::Builder::new()
        .name("ota-sim-link".into())
        .spawn(move || forward_link(link_rx, inbound))?;
    wait_listening(listen)?;
    Ok((listen, Publisher::Local(Mutex::new(link_tx))))
}

/// rumqttd binds on its own thread; a device must not be able to connect before it does.
fn wait_listening(addr: SocketAddr) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(Error::Broker(format!("broker did not listen on {addr}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Hands what devices publish to the engine. When the link's buffer fills up (200 messages,
/// e.g. a thousand devices reporting at once), rumqttd stops forwarding to it and says so with
/// `Unschedule`: the link must ask to be scheduled again once it took the buffer, or the cloud
/// never hears from any device again.
fn forward_link(mut rx: LinkRx, inbound: Sender<Input>) {
    loop {
        match rx.recv() {
            Ok(Some(Notification::Forward(f))) => {
                let topic = String::from_utf8_lossy(&f.publish.topic).into_owned();
                let payload = f.publish.payload.to_vec();
                if inbound.send(Input::Message { topic, payload }).is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = rx.ready() {
                    tracing::error!("broker link closed: {e}");
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("broker link closed: {e}");
                return;
            }
        }
    }
}

/// The parts of `mqtt://[user[:password]@]host[:port]`.
#[derive(Debug, PartialEq, Eq)]
struct BrokerUrl {
    host: String,
    port: u16,
    login: Option<(String, String)>,
}

fn parse_url(url: &str) -> Result<BrokerUrl, Error> {
    let bad = || {
        Error::Broker(format!(
            "bad broker url {url:?}, want mqtt://[user:pass@]host[:port]"
        ))
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (login, hostport) = match rest.rsplit_once('@') {
        Some((l, h)) => (Some(l), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (hostport, 1883),
    };
    if host.is_empty() {
        return Err(bad());
    }
    let login = login.map(|l| match l.split_once(':') {
        Some((u, p)) => (u.to_owned(), p.to_owned()),
        None => (l.to_owned(), String::new()),
    });
    Ok(BrokerUrl {
        host: host.to_owned(),
        port,
        login,
    })
}

/// Connects the cloud to an external broker; returns once it is subscribed.
pub(crate) fn connect_external(
    url: &str,
    inbound: Sender<Input>,
) -> Result<(String, u16, Publisher), Error> {
    let BrokerUrl { host, port, login } = parse_url(url)?;
    let client_id = format!(
        "ota-sim-cloud-{}",
        crate::crypto::Rng::new().alphanumeric(8)
    );
    let mut options = rumqttc::MqttOptions::new(client_id, host.clone(), port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some((user, pass)) = login {
        options.set_credentials(user, pass);
    }
    let (client, mut connection) = rumqttc::Client::new(options, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(5);
    connection.eventloop.set_network_options(network);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sub_client = client.clone();
    std::thread::Builder::new()
        .name("ota-sim-mqtt".into())
        .spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        // Clean session: subscriptions are gone after every reconnect.
                        for filter in CLOUD_FILTERS {
                            let _ = sub_client.try_subscribe(filter, rumqttc::QoS::AtLeastOnce);
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(Ok(()));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let message = Input::Message {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                        };
                        if inbound.send(message).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("external broker: {e}");
                        let _ = ready_tx.send(Err(e.to_string()));
                        // rumqttc reconnects on the next poll; do not spin while the broker is down.
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })?;
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok((host, port, Publisher::Remote(client))),
        Ok(Err(e)) => Err(Error::Broker(e)),
        Err(_) => Err(Error::Broker(format!("no answer from {url}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse() {
        let url = |host: &str, port, login: Option<(&str, &str)>| BrokerUrl {
            host: host.into(),
            port,
            login: login.map(|(u, p)| (u.into(), p.into())),
        };
        assert_eq!(parse_url("mqtt://h:1884").unwrap(), url("h", 1884, None));
        assert_eq!(parse_url("tcp://h").unwrap(), url("h", 1883, None));
        assert_eq!(
            parse_url("mqtt://u:p@h:1/").unwrap(),
            url("h", 1, Some(("u", "p")))
        );
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
        assert!(parse_url("mqtt://:1").is_err());
    }
}
