//! A local cloud for testing OTA devices against the Alibaba Cloud IoT protocol without an
//! account: an MQTT broker that checks device logins, a firmware server with signed, expiring
//! URLs, `Range` support and injectable faults, and the job engine that pushes tasks and tracks
//! per-device task states (see docs/protocol.md §9).
//!
//! ```no_run
//! use ota_sim::{JobSpec, PackageSpec, Sim, SimConfig, TaskState};
//! use std::time::Duration;
//!
//! let sim = Sim::start(SimConfig::default())?;
//! let device = sim.add_device()?;
//! let package = sim.add_package(PackageSpec::new("2.0.0", vec![0u8; 4096]))?;
//! let job = sim.create_job(JobSpec::batch(package).dynamic())?;
//! // ... connect a device to sim.mqtt_host():sim.mqtt_port() with device.credentials() ...
//! sim.wait_task_state(job, &device, TaskState::Succeeded, Duration::from_secs(10))?;
//! # Ok::<(), ota_sim::Error>(())
//! ```
//!
//! Behaviour worth knowing when testing a device against it:
//! * With [`SimConfig::tls`] it also listens for MQTT over TLS ([`Sim::mqtts_port`]) and
//!   HTTPS; devices trust [`Sim::ca_pem`]. The generated chain is RSA-2048 (root, intermediate,
//!   leaf) and TLS 1.2 offers static-RSA and ECDHE-RSA suites with AES-CBC and AES-GCM, as the
//!   official SDKs need; [`TlsOptions`] chooses an ECDSA chain, the versions and the suites. Plain and TLS devices share the simulator: both
//!   MQTT ports lead to one broker, and a device whose latest login came over TLS gets
//!   `https` URLs, any other `http` ones.
//! * A client id carrying `_ss=1` is subscribed by the simulator to its OTA downlink topics
//!   (push, firmware/get reply, block reply), as the platform does for the official SDK,
//!   which sends no SUBSCRIBE for them; the device never sees that SUBACK.
//! * A refused login is a connection closed before CONNACK (rumqttd sends no refusal code).
//! * Through the embedded broker a device is online exactly while an MQTT connection of it is
//!   open: from its accepted login until DISCONNECT, end of stream, or one and a half
//!   keep-alives of silence. Through an external broker it counts as online once it sent
//!   anything. Jobs push to online devices at once, others when they next report their
//!   version (inform).
//! * Progress step `0` counts as in progress (the official SDKs report it when a download
//!   starts); a negative step fails the task. Success comes only from an inform of the target
//!   version.
//! * Through the embedded broker the cloud publishes at QoS 0 (a lost push is re-sent on the
//!   next inform); through an external broker at QoS 1. Block replies of the MQTT channel go
//!   the same way.
//! * Tasks are per (device, module): a job looks only at the device's version of its package's
//!   module, a device has at most one active task per module, and firmware/get without a
//!   `module` means `default`.
//! * A package made with [`PackageSpec::files`] is pushed in the multi-file variant
//!   (`data.files`, no top-level `size`/`url`/`md5`/`sign`); each file has its own signed URL.
//! * An MQTT-channel package ([`PackageSpec::mqtt`]) is pushed with `"dProtocol":"mqtt"`, a
//!   `streamId` unique to the task, and `streamFileId` 1 (or one `streamFileId` per entry of
//!   `data.files`, 1-based). Block requests on `/sys/{pk}/{dn}/thing/file/download` are
//!   answered on `.../download_reply` with `2 + H + bSize + 2` bytes (docs/protocol.md §6); the id
//!   and `fileToken` are echoed (no token in the request, none in the reply). A block running
//!   past the end gets the remaining bytes. A refused request gets a frame with `bSize` 0, no
//!   data and the CRC of nothing (0): code 400 for a missing or bad field, a size of 0 or above
//!   [`MAX_BLOCK_SIZE`], or an offset at or past the end; 404 for a stream that is not an
//!   active (not CONFIRM) MQTT task of this device, or an unknown file id. A payload that is not
//!   JSON gets no reply. Devices need a maximum incoming packet size above the block size
//!   (rumqttc's default is 10 KiB).
//! * Gateways ([`Sim::add_gateway`]) and their sub-devices ([`Sim::add_subdevice`]) follow
//!   docs/protocol.md §14 (module [`gateway`]): topology add/get/delete and sub-device
//!   login/logout with the sign checked; a sub-device is online while logged in through a
//!   connected gateway, and its OTA messages (on its own topics, over the gateway's
//!   connection) are refused with a 520 notice without a session. [`GatewayFault`]s reach
//!   every error code.
//! * The MQTT reply faults ([`Fault::DropReply`] and the others) act only on replies carrying
//!   data; a held-back ([`Fault::ReorderReply`]) reply leaves right after the device's next
//!   reply of any kind.
//!
//! Which module owns what (imports never go in a circle; `.ci/check-module-cycles` checks):
//! * `world` owns the state behind one lock (job engine, faults, request logs, block server,
//!   gateways) and runs the engine thread. The others reach it only through narrow doors:
//!   `broker` and `front` send into the `input` channel, the firmware server (`http`)
//!   asks through the `Firmware` traits it defines, and the world publishes through the
//!   broker's `Publisher`.
//! * `jobs` is the job engine (packages, jobs, task states); `mqtt_download` answers block
//!   requests, [`gateway`] the sub-device sessions; both drive the engine, never the reverse.
//! * `messages` parses what devices send and encodes what the cloud sends; it imports no part of
//!   the engine. `model`, `package` and `faults` are the vocabulary all of them share.
//! * `sim` is the library API ([`Sim`]) over all of it; `listeners`, `tls`, `sessions` and
//!   `limits` set up the ports; [`load`] is `ota-sim load`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod broker;
mod crypto;
mod fault_spec;
mod faults;
mod frames;
mod front;
pub mod gateway;
mod history;
mod http;
mod input;
mod jobs;
mod lenient_json;
mod limits;
mod listeners;
mod live;
pub mod load;
mod messages;
mod model;
mod mqtt_download;
mod mqtt_wire;
mod package;
mod package_signing;
mod sessions;
mod signing;
mod sim;
mod tls;
mod world;

pub use auth::{verify_login, Credentials, LoginError, LoginSignMethod, SDK_TIMESTAMP};
pub use broker::BrokerConfig;
pub use fault_spec::{FaultSpec, FAULT_GRAMMAR};
pub use faults::{Fault, FaultId, Times};
pub use gateway::{GatewayFault, GatewayFaultSpec, GATEWAY_FAULT_GRAMMAR, SUBDEVICE_PRODUCT_KEY};
pub use http::DownloadRecord;
pub use jobs::PROGRESS_HISTORY;
pub use limits::raise_open_files;
pub use live::StateChange;
pub use messages::{TaskData, TaskFile};
pub use model::*;
pub use mqtt_download::{BlockRecord, MAX_BLOCK_SIZE};
pub use package::*;
pub use package_signing::{signing_keys, PackageSigner};
pub use sessions::SessionRecord;
pub use signing::UrlError;
pub use sim::Sim;
pub use tls::{SimTls, TlsKey, TlsOptions, TlsVersions, DEFAULT_CIPHERS};

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Everything that can go wrong when driving the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket or thread could not be set up.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The MQTT broker could not be started or reached.
    #[error("broker: {0}")]
    Broker(String),
    /// A product key, device name, version or module breaks the platform's rules.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// A public URL is not `scheme://host[:port]`.
    #[error("bad public URL {0}")]
    InvalidUrl(String),
    /// The device is registered already.
    #[error("device {0} exists already")]
    DuplicateDevice(String),
    /// No such device.
    #[error("unknown device {0}")]
    UnknownDevice(String),
    /// No such package.
    #[error("unknown package")]
    UnknownPackage,
    /// A package needs a file, and no file may be empty.
    #[error("package has no data")]
    EmptyPackage,
    /// A package-signing key is unusable (not PEM, not RSA-2048 with exponent 65537).
    #[error("package signing key: {0}")]
    InvalidKey(String),
    /// A package breaks a limit: too many files, an image too large for the MQTT channel,
    /// `extData` that is not a small JSON object.
    #[error("invalid package: {0}")]
    InvalidPackage(String),
    /// No such job.
    #[error("unknown job")]
    UnknownJob,
    /// The package needs a successful verification job before a batch job may use it.
    #[error("package is not verified yet")]
    PackageNotVerified,
    /// A verification job needs a list of devices.
    #[error("a verification job needs devices")]
    NoDevices,
    /// The TLS certificate or key could not be made or read.
    #[error("tls: {0}")]
    Tls(String),
    /// A wait ran out of time, or the task ended in another state with no retry pending.
    #[error("waited for {wanted}; last seen: {last}")]
    Wait {
        /// What was waited for.
        wanted: String,
        /// What was seen last.
        last: String,
    },
}

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The MQTT broker.
    pub broker: BrokerConfig,
    /// Address the device-facing ports (MQTT, firmware server, TLS ones) listen on; the
    /// embedded rumqttd itself listens on a loopback port of its own behind them.
    pub bind: IpAddr,
    /// Firmware server port; 0 picks a free one.
    pub http_port: u16,
    /// The base of the `http` URLs devices get, e.g. `http://fw.example.test` (a name that
    /// leads to the firmware server, through a proxy or a port forward); default: the
    /// listener's own address. A scheme's default port is never written out.
    pub public_url: Option<String>,
    /// The same for `https` URLs (with `tls`).
    pub public_https_url: Option<String>,
    /// How long download URLs stay valid.
    pub url_ttl: Duration,
    /// ProductKey of devices made by [`Sim::add_device`].
    pub product_key: String,
    /// Also listen for MQTT over TLS and HTTPS, with this certificate (embedded broker only).
    pub tls: Option<SimTls>,
    /// The generated chain's key type and names, and the TLS versions and ciphers offered.
    pub tls_options: TlsOptions,
    /// MQTT-over-TLS port when `tls` is set; 0 picks a free one.
    pub mqtts_port: u16,
    /// HTTPS firmware server port when `tls` is set; 0 picks a free one.
    pub https_port: u16,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            broker: BrokerConfig::Embedded { port: 0 },
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_port: 0,
            public_url: None,
            public_https_url: None,
            url_ttl: Duration::from_secs(30 * 60),
            product_key: "a1OtaSimPK1".to_owned(),
            tls: None,
            tls_options: TlsOptions::default(),
            mqtts_port: 0,
            https_port: 0,
        }
    }
}
