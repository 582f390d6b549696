//! The simulator's public ports, bound before anything starts so a taken port is an error at
//! once: plain MQTT and, with TLS, MQTT over TLS and HTTPS. Plain and TLS devices share one
//! simulator: both MQTT ports lead to the same broker, and a device's URLs are `https` when
//! its latest login came over TLS, `http` otherwise.

use crate::front::{Front, Transports, Upstream};
use crate::tls::Identity;
use crate::{Error, SimConfig};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

/// The bound public ports, not serving yet.
pub(crate) struct Listeners {
    http: SocketAddr,
    mqtt: Option<TcpListener>,
    mqtts: Option<TcpListener>,
    https: Option<TcpListener>,
    identity: Option<Identity>,
    pub(crate) transports: Arc<Transports>,
}

/// `scheme://host[:port]` without the scheme's default port, as platform URLs are written:
/// some devices take everything between `://` and the first `/` as the host name.
pub(crate) fn base_url(scheme: &str, addr: SocketAddr) -> String {
    let default = match scheme {
        "https" => 443,
        _ => 80,
    };
    match addr.port() == default {
        true if addr.is_ipv6() => format!("{scheme}://[{}]", addr.ip()),
        true => format!("{scheme}://{}", addr.ip()),
        false => format!("{scheme}://{addr}"),
    }
}

/// Checks a `--public-url`-style base: `scheme://host[:port]`, nothing after; returns it
/// without a trailing `/` and without the scheme's default port.
pub(crate) fn public_base(url: &str, scheme: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::InvalidUrl(format!("{url:?}: {why}"));
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| bad(&format!("want {scheme}://host[:port]")))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad("want a host and an optional port, no path"));
    }
    let default = if scheme == "https" { ":443" } else { ":80" };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| bad("bad port"))?;
    }
    let trimmed = match port.map(|p| format!(":{p}")) {
        Some(p) if p == default => host,
        _ => authority,
    };
    Ok(format!("{scheme}://{trimmed}"))
}

fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, Error> {
    TcpListener::bind(SocketAddr::new(ip, port))
        .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("port {port}: {e}"))))
}

impl Listeners {
    /// Binds the ports `config` asks for; `embedded` says whether this simulator runs the
    /// broker (TLS needs it: the login check must know which port a device came through).
    /// The firmware server's listener is returned apart: it serves plain HTTP itself.
    pub(crate) fn bind(
        config: &SimConfig,
        embedded: bool,
    ) -> Result<(TcpListener, Listeners), Error> {
        let identity = config
            .tls
            .as_ref()
            .map(|tls| Identity::new(tls, &config.tls_options))
            .transpose()?;
        if identity.is_some() && !embedded {
            return Err(Error::Tls("TLS needs the embedded broker".into()));
        }
        let tls = identity.is_some();
        let ip = config.bind;
        let http = bind(ip, config.http_port)?;
        let listeners = Listeners {
            http: http.local_addr()?,
            mqtt: match &config.broker {
                crate::BrokerConfig::Embedded { port } => Some(bind(ip, *port)?),
                crate::BrokerConfig::External { .. } => None,
            },
            mqtts: tls.then(|| bind(ip, config.mqtts_port)).transpose()?,
            https: tls.then(|| bind(ip, config.https_port)).transpose()?,
            identity,
            transports: Arc::default(),
        };
        Ok((http, listeners))
    }

    /// The firmware server's address.
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The HTTPS listener's base URL.
    pub(crate) fn https_base(&self) -> Result<Option<String>, Error> {
        let addr = self
            .https
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        Ok(addr.map(|a| base_url("https", a)))
    }

    /// The plain MQTT address (embedded broker only).
    pub(crate) fn mqtt_addr(&self) -> Result<Option<SocketAddr>, Error> {
        Ok(self
            .mqtt
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?)
    }

    /// The MQTT-over-TLS port.
    pub(crate) fn mqtts_port(&self) -> Result<Option<u16>, Error> {
        let addr = self
            .mqtts
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        Ok(addr.map(|a| a.port()))
    }

    /// What TLS devices must trust.
    pub(crate) fn ca_pem(&self) -> Option<String> {
        self.identity.as_ref().map(|i| i.ca_pem.clone())
    }

    /// The fronts to run, once the broker listens at `broker` (embedded only).
    pub(crate) fn fronts(
        self,
        broker: Option<SocketAddr>,
        events: &std::sync::mpsc::Sender<crate::input::Input>,
    ) -> Vec<Front> {
        let acceptor = self.identity.map(|i| Arc::new(i.acceptor));
        let mut fronts = Vec::new();
        if let Some(addr) = broker {
            let mqtt = Upstream::Mqtt {
                addr,
                transports: self.transports.clone(),
                events: events.clone(),
                logins: Arc::new(tokio::sync::Semaphore::new(crate::front::MAX_LOGINS)),
            };
            let ports = [(self.mqtt, None), (self.mqtts, acceptor.clone())];
            for (listener, tls) in ports {
                if let Some(listener) = listener {
                    let upstream = mqtt.clone();
                    fronts.push(Front {
                        listener,
                        tls,
                        upstream,
                    });
                }
            }
        }
        if let (Some(listener), Some(tls)) = (self.https, acceptor) {
            fronts.push(Front {
                listener,
                tls: Some(tls),
                upstream: Upstream::Http(self.http),
            });
        }
        fronts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_left_out() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(base_url("http", at("127.0.0.1:80")), "http://127.0.0.1");
        assert_eq!(
            base_url("http", at("127.0.0.1:443")),
            "http://127.0.0.1:443"
        );
        assert_eq!(base_url("https", at("127.0.0.1:443")), "https://127.0.0.1");
        assert_eq!(base_url("https", at("[::1]:443")), "https://[::1]");
        assert_eq!(
            base_url("http", at("10.0.0.1:8080")),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            public_base("http://fw.test/", "http").unwrap(),
            "http://fw.test"
        );
        assert_eq!(
            public_base("http://fw.test:80", "http").unwrap(),
            "http://fw.test"
        );
        assert_eq!(
            public_base("https://fw:8443", "https").unwrap(),
            "https://fw:8443"
        );
        assert_eq!(
            public_base("https://[::1]:443", "https").unwrap(),
            "https://[::1]"
        );
        assert!(public_base("https://fw.test", "http").is_err());
        assert!(public_base("http://fw.test/path", "http").is_err());
        assert!(public_base("http://fw.test:x", "http").is_err());
        assert!(public_base("http://", "http").is_err());
    }
}
