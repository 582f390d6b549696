#![no_std]
// Plain-only builds have no unsafe code at all; the `tls` feature lends its record buffers to
// successive sessions in one small module (`tls::lend`, which says why), and the `mbedtls`
// feature installs mbedTLS's wall-clock hook (one call, `mbedtls::install_wall_clock`).
#![cfg_attr(not(any(feature = "tls", feature = "mbedtls")), forbid(unsafe_code))]
#![cfg_attr(any(feature = "tls", feature = "mbedtls"), deny(unsafe_code))]
#![deny(missing_docs)]
//! The `#![no_std]` async adapter of [`ota_core`]: a [`Driver`] that owns the agent and
//! serves its actions on embedded peripherals.
//!
//! | the agent asks for | served by |
//! | --- | --- |
//! | subscribe, publish | an [`MqttTransport`]: [`MqttClient`] (MQTT 3.1.1 over a [`Connect`]or) or your own |
//! | fetch from an offset | reqwless's HTTP framing (`Range: bytes=N-`, sized or chunked bodies) over a stream of a [`Connect`]or |
//! | the streams | [`TcpConnector`] (any `embedded-nal-async` stack), `mbedtls::MbedtlsConnector` (feature `mbedtls`: TLS 1.2/1.3 with RSA chains, what the platform speaks), `tls::TlsConnector` (feature `tls`: TLS 1.3 with ECDSA only), or your own [`Connect`] |
//! | write a block | [`Slot`] on an `embedded-storage-async` `NorFlash` (erase, write, pad; see [`flash`] for the block rule) |
//! | read the slot back (a resumed prefix, the image before activation) | [`Slot::read_any`] into the agent's idle staging block |
//! | save / clear the record | [`RecordStore`]: two alternating copies with sequence numbers and a CRC |
//! | activate, confirm, roll back, reboot | a [`Bootloader`] (embassy-boot's `FirmwareState` fits) |
//! | time | a [`Clock`] (milliseconds, sleep until an instant) |
//! | notifications, health verdict | your [`Application`] |
//!
//! The login is docs/protocol.md §7 ([`Login`], HMAC-SHA256). The driver is one task:
//!
//! ```no_run
//! use embedded_nal_async::{Dns, TcpConnect};
//! use embedded_storage_async::nor_flash::NorFlash;
//! use ota_core::{Config, DeviceIdentity};
//! use ota_embedded::{
//!     Application, Bootloader, Clock, Driver, Exit, Login, MqttClient, Parts, RecordStore,
//!     SecureMode, Security, Settings, Slot, TcpConnector,
//! };
//!
//! /// The OTA task of a firmware (with embassy: an `#[embassy_executor::task]`).
//! async fn ota_task<T: TcpConnect, D: Dns, F: NorFlash, R: NorFlash>(
//!     net: &T,
//!     dns: &D,
//!     (dfu, state): (F, R),
//!     bootloader: impl Bootloader,
//!     clock: impl Clock,
//!     app: impl Application,
//! ) -> Result<(), ota_embedded::Error> {
//!     let identity = DeviceIdentity::new("a1TestPK001", "dev01").map_err(ota_embedded::Error::Agent)?;
//!     let mut config = Config::new(identity);
//!     config.write_block = F::ERASE_SIZE;       // the slot rule: a multiple of the sector
//!     config.checkpoint_interval = 64 * 1024;   // a power loss re-downloads at most this
//!     let secret = "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa";
//!     let Ok(login) = Login::new("a1TestPK001", "dev01", secret, "2524608000000", SecureMode::Plain)
//!     else { return Ok(()) };
//!     let host = "a1TestPK001.iot-as-mqtt.cn-shanghai.aliyuncs.com";
//!     let tcp = TcpConnector::new(net, dns);
//!     let parts = Parts {
//!         mqtt: MqttClient::<_, 4096, 1024>::new(&tcp, host, 1883, Security::Plain, 60),
//!         http: TcpConnector::new(net, dns), // http:// URLs only: see `tls` for https://
//!         slot: Slot::new(dfu, 0, 256 * 1024).map_err(ota_embedded::Error::Flash)?,
//!         records: RecordStore::new(state, 0).map_err(ota_embedded::Error::Flash)?,
//!         boot: bootloader,
//!         clock,
//!         app,
//!         login,
//!         settings: Settings::default(),
//!     };
//!     let mut driver = Driver::new(config, env!("CARGO_PKG_VERSION"), parts).await?;
//!     match driver.run().await? {
//!         Exit::Reboot => Ok(()), // Bootloader::reset returned: only in tests
//!     }
//! }
//! ```
//!
//! Memory is fixed and allocated by the caller (put the driver in a `static`, e.g. a
//! `StaticCell`, or in the task's future): the [`Driver`] holds two URL buffers of
//! [`driver::MAX_URL_LEN`] bytes and reqwless's header buffer (2 KiB; body bytes are read straight
//! into the core's staging block, with no chunk buffer of their own), the
//! MQTT client's `RX` + `TX` buffers, and the record store's 1 KiB copy buffer. With TLS, each
//! of the two connectors borrows its record buffers (20,736 bytes at the recommended sizes). The only heap
//! use is ota-core's: one staging block of `Config::write_block` bytes, its action arena and
//! the parsed task. BENCHMARKS.md has the measured figures. `Config::write_buffers` (the
//! core's staging ring) stays at its default of 1: this driver awaits each flash write in its
//! loop, so more blocks would only cost RAM, and [`Driver::new`] refuses them.
//!
//! The traits use `async fn` without `Send` bounds: firmware executors run tasks on one core.
#![allow(async_fn_in_trait)]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod boot;
pub mod clock;
pub mod connect;
pub mod driver;
mod error;
pub mod flash;
pub mod gateway;
mod http;
pub mod login;
#[cfg(feature = "mbedtls")]
pub mod mbedtls;
pub mod mqtt;
pub mod record;
mod time_sync;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;

#[cfg(test)]
mod testflash;

pub use boot::Bootloader;
pub use clock::{Clock, SyncedClock};
pub use connect::{Connect, ConnectError, Security, TcpConnector};
pub use driver::{Application, Driver, Exit, Parts, Settings};
pub use error::Error;
pub use flash::{FlashError, Slot};
pub use gateway::{GatewayDriver, GatewayParts, SubdeviceFlasher};
pub use login::{Login, SecureMode};
pub use mqtt::{MqttClient, MqttError};
pub use record::RecordStore;
#[cfg(feature = "tls")]
pub use tls::{TlsConnector, TlsStream};
pub use transport::{Message, MqttTransport};
