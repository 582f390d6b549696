//! Dummy peripherals of the driver binaries: a TCP stack, DNS, NOR flash, bootloader, clock
//! and application whose results the optimiser cannot see through (black_box), so every path
//! of the driver, the MQTT client, reqwless and the core stays linked.

use core::hint::black_box;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::sync::atomic::{AtomicU32, Ordering};

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use embedded_nal_async::{AddrType, Dns, TcpConnect};
use embedded_storage_async::nor_flash::{
    ErrorType as FlashErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash,
};
use ota_core::{Config, DeviceIdentity, Instant, Notification};
use ota_embedded::{Application, Bootloader, Clock, Login, RecordStore, SecureMode, Slot};

/// A network interface: bytes come from "hardware".
pub struct Net;
pub struct Conn;

impl ErrorType for Conn {
    type Error = ErrorKind;
}

impl Read for Conn {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let n = black_box(buf.len());
        buf[..n].copy_from_slice(black_box(&[0u8; 1024][..n.min(1024)]));
        black_box(Ok(n))
    }
}

impl Write for Conn {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        black_box(buf);
        black_box(Ok(buf.len()))
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        black_box(Ok(()))
    }
}

impl TcpConnect for Net {
    type Error = ErrorKind;
    type Connection<'a> = Conn;

    async fn connect<'a>(&'a self, remote: SocketAddr) -> Result<Conn, ErrorKind> {
        black_box(remote);
        black_box(Ok(Conn))
    }
}

impl Dns for Net {
    type Error = ();

    async fn get_host_by_name(&self, host: &str, _: AddrType) -> Result<IpAddr, ()> {
        black_box(host);
        black_box(Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }

    async fn get_host_by_address(&self, _: IpAddr, _: &mut [u8]) -> Result<usize, ()> {
        Err(())
    }
}

/// NOR flash with 4 KiB sectors and a 4-byte write unit.
pub struct Flash;

impl FlashErrorType for Flash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for Flash {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        black_box(offset);
        bytes.fill(black_box(0xFF));
        black_box(Ok(()))
    }

    fn capacity(&self) -> usize {
        512 * 1024
    }
}

impl NorFlash for Flash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), NorFlashErrorKind> {
        black_box((from, to));
        black_box(Ok(()))
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), NorFlashErrorKind> {
        black_box((offset, bytes));
        black_box(Ok(()))
    }
}

pub struct Boot;

impl Bootloader for Boot {
    type Error = ();

    async fn mark_updated(&mut self) -> Result<(), ()> {
        black_box(Ok(()))
    }

    async fn mark_booted(&mut self) -> Result<(), ()> {
        black_box(Ok(()))
    }

    async fn mark_rollback(&mut self) -> Result<(), ()> {
        black_box(Ok(()))
    }

    fn reset(&mut self) {
        cortex_m::peripheral::SCB::sys_reset()
    }
}

/// A millisecond counter standing in for a timer peripheral.
pub struct Ticks(pub AtomicU32);

impl Clock for Ticks {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::from(self.0.fetch_add(1, Ordering::Relaxed)))
    }

    async fn sleep_until(&self, at: Instant) {
        while self.now() < at {}
    }
}

pub struct App;

impl Application for App {
    fn notify(&mut self, note: &Notification<'_>) {
        black_box(note);
    }

    async fn check_health(&mut self, version: &str) -> bool {
        black_box(version);
        black_box(true)
    }
}

/// The driver's configuration, login, slot and record store, as a firmware would set them.
pub fn setup() -> Option<(Config, Login, Slot<Flash>, RecordStore<Flash>)> {
    let identity = DeviceIdentity::new("a1TestPK001", "dev01").ok()?;
    let mut config = Config::new(identity);
    config.write_block = 4096;
    config.checkpoint_interval = 64 * 1024;
    let login = Login::new(
        "a1TestPK001",
        "dev01",
        black_box("Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa"),
        ota_embedded::login::SDK_TIMESTAMP,
        SecureMode::Plain,
    )
    .ok()?;
    let slot = Slot::new(Flash, 64 * 1024, 448 * 1024).ok()?;
    let records = RecordStore::new(Flash, 0).ok()?;
    Some((config, login, slot, records))
}

/// The MQTT host of the examples.
pub const MQTT_HOST: &str = "a1TestPK001.iot-as-mqtt.cn-shanghai.aliyuncs.com";
