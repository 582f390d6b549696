//! std-backed implementations of the driver's traits, and a device that runs the embedded
//! driver against the simulator on its own thread (a current-thread tokio runtime).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use embedded_nal_async::{AddrType, Dns, TcpConnect};
use embedded_storage_async::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use ota_core::{Config, DeviceIdentity, Instant, Notification, Outcome};
use ota_embedded::tls::{RECORD_RX_LEN, RECORD_TX_LEN};
use ota_embedded::{
    Application, Bootloader, Clock, Connect, Driver, Exit, Login, MqttClient, Parts, RecordStore,
    SecureMode, Security, Settings, Slot, TcpConnector, TlsConnector,
};
use ota_sim::{DeviceInfo, Sim};

/// Guard timeout for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(20);
/// Flash geometry of the test device: 4 KiB sectors, 8-byte write unit.
pub const SECTOR: usize = 4096;
pub const WRITE_UNIT: usize = 8;
pub const SLOT_SIZE: usize = 64 * SECTOR;
pub const CHECKPOINT: u64 = 4 * SECTOR as u64;

// ---- network and time -------------------------------------------------------------------

/// TCP through tokio.
pub struct TokioStack;

impl TcpConnect for TokioStack {
    type Error = std::io::Error;
    type Connection<'a> = FromTokio<tokio::net::TcpStream>;

    async fn connect<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Result<Self::Connection<'a>, Self::Error> {
        let stream = tokio::net::TcpStream::connect(remote).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

/// Resolves IP literals, and every name to loopback (the simulator listens there; a TLS
/// test reaches it under a name its certificate does not carry).
pub struct LoopbackDns;

impl Dns for LoopbackDns {
    type Error = std::net::AddrParseError;

    async fn get_host_by_name(&self, host: &str, _: AddrType) -> Result<IpAddr, Self::Error> {
        Ok(host.parse().unwrap_or(IpAddr::from([127, 0, 0, 1])))
    }

    async fn get_host_by_address(&self, _: IpAddr, _: &mut [u8]) -> Result<usize, Self::Error> {
        Ok(0)
    }
}

/// What the device's clock says the wall time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wall {
    /// Not known yet (no SNTP answer).
    Unknown,
    /// The host's time.
    System,
    /// This many Unix seconds.
    At(u64),
}

/// Milliseconds since the session started, on tokio's timer, and the wall time.
pub struct TokioClock {
    start: tokio::time::Instant,
    wall: Wall,
}

impl TokioClock {
    pub fn new(wall: Wall) -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
            wall,
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    async fn sleep_until(&self, at: Instant) {
        tokio::time::sleep_until(self.start + Duration::from_millis(at.as_millis())).await
    }

    fn unix_time(&self) -> Option<u64> {
        match self.wall {
            Wall::Unknown => None,
            Wall::System => Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            ),
            Wall::At(secs) => Some(secs),
        }
    }
}

/// The device's clock as the driver sees it: a [`ota_embedded::SyncedClock`] that also
/// tells the test when the platform's time has been learnt (so a test waits for that event,
/// not for a guessed interval).
pub struct WatchedClock {
    synced: ota_embedded::SyncedClock<TokioClock>,
    learnt: Arc<AtomicBool>,
}

impl Clock for WatchedClock {
    fn now(&self) -> Instant {
        self.synced.now()
    }

    async fn sleep_until(&self, at: Instant) {
        self.synced.sleep_until(at).await
    }

    fn unix_time(&self) -> Option<u64> {
        self.synced.unix_time()
    }

    fn set_unix_time(&self, unix_ms: u64, at: Instant) {
        self.synced.set_unix_time(unix_ms, at);
        self.learnt.store(true, Ordering::SeqCst);
    }
}

/// The host's RNG for mbedTLS (rand_core 0.10).
#[cfg(feature = "mbedtls")]
pub struct OsRng;

#[cfg(feature = "mbedtls")]
impl rand_core_010::TryRng for OsRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        getrandom::fill(dst).expect("the host has randomness");
        Ok(())
    }
}

#[cfg(feature = "mbedtls")]
impl rand_core_010::TryCryptoRng for OsRng {}

/// The process's one mbedTLS instance (mbedtls-rs allows one at a time), shared by every
/// test, as a firmware shares one between its two connectors.
#[cfg(feature = "mbedtls")]
pub fn mbedtls() -> ota_embedded::mbedtls::TlsReference<'static> {
    use ota_embedded::mbedtls::Tls;
    static TLS: std::sync::OnceLock<Tls<'static>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| Tls::new(Box::leak(Box::new(OsRng))).expect("one mbedTLS instance"))
        .reference()
}

/// Which TLS client the device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsLib {
    /// embedded-tls (TLS 1.3, ECDSA P-256).
    EmbeddedTls,
    /// mbedTLS, TLS 1.2 and 1.3, or TLS 1.2 only.
    Mbedtls { tls12_only: bool },
}

/// The TLS record buffers of one connector.
pub fn record_buffers() -> (Vec<u8>, Vec<u8>) {
    (vec![0; RECORD_RX_LEN], vec![0; RECORD_TX_LEN])
}

/// A TLS connector over tokio trusting `cas`, with the host's RNG.
pub fn tls_connector<'a, C: Clock>(
    stack: &'a TokioStack,
    dns: &'a LoopbackDns,
    cas: &'a [&'a [u8]],
    clock: C,
    (rx, tx): &'a mut (Vec<u8>, Vec<u8>),
) -> TlsConnector<'a, TokioStack, LoopbackDns, rand_core_06::OsRng, C> {
    TlsConnector::new(
        TcpConnector::new(stack, dns),
        cas,
        rand_core_06::OsRng,
        clock,
        rx,
        tx,
    )
}

/// The DER certificate of a PEM one.
pub fn der_of_pem(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

// ---- flash with power cuts ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamFlashError(NorFlashErrorKind);

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

#[derive(Default)]
pub struct FlashState {
    pub bytes: Vec<u8>,
    pub writes: u32,
    /// The write with this number (1-based) is torn half-way and the power goes.
    pub cut_at_write: Option<u32>,
    /// Offset of the write that was cut, once it fired.
    pub cut_fired_at: Option<u32>,
    /// After the write with this number (1-based), one bit at this offset is lost (a cell
    /// that did not hold its charge): the read-back before activation must catch it.
    pub lose_bit_after_write: Option<(u32, usize)>,
    /// Reads of this flash (the agent re-reads the slot before trusting it).
    pub reads: u32,
}

/// The power of one device, shared by its slot and record flashes: every erase, write and
/// read counts as an operation, and the power can be cut just before the operations numbered
/// in `cuts` (1-based), which then never happen.
#[derive(Default, Debug)]
pub struct Power {
    pub ops: u32,
    pub cuts: Vec<u32>,
}

/// NOR flash in RAM shared across "reboots": writes only clear bits, erase sets `0xFF`,
/// alignment is enforced. When the power is cut the operation never completes (the CPU is
/// gone) and `power_cut` fires.
#[derive(Clone)]
pub struct RamFlash {
    pub state: Arc<Mutex<FlashState>>,
    pub power_cut: Arc<tokio::sync::Notify>,
    pub power: Arc<Mutex<Power>>,
}

impl RamFlash {
    pub fn new(size: usize) -> Self {
        RamFlash {
            state: Arc::new(Mutex::new(FlashState {
                bytes: vec![0xFF; size],
                ..FlashState::default()
            })),
            power_cut: Arc::new(tokio::sync::Notify::new()),
            power: Arc::default(),
        }
    }

    /// Counts one erase, write or read; true when the power goes right before it.
    fn cut_before_this_op(&self) -> bool {
        let mut power = self.power.lock().unwrap();
        power.ops += 1;
        power.cuts.contains(&power.ops)
    }

    async fn lose_power(&self) {
        self.power_cut.notify_one();
        std::future::pending::<()>().await;
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.state.lock().unwrap().bytes.clone()
    }

    /// The same flash for the test's own reads: on a power supply of its own, so that they
    /// neither count as the device's operations nor meet its power cuts.
    pub fn detached(&self) -> RamFlash {
        RamFlash {
            state: Arc::clone(&self.state),
            power_cut: Arc::new(tokio::sync::Notify::new()),
            power: Arc::default(),
        }
    }
}

impl ErrorType for RamFlash {
    type Error = RamFlashError;
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        if self.cut_before_this_op() {
            self.lose_power().await;
        }
        let mut state = self.state.lock().unwrap();
        state.reads += 1;
        let at = offset as usize;
        let src = state
            .bytes
            .get(at..at + bytes.len())
            .ok_or(RamFlashError(NorFlashErrorKind::OutOfBounds))?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.state.lock().unwrap().bytes.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = WRITE_UNIT;
    const ERASE_SIZE: usize = SECTOR;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if self.cut_before_this_op() {
            self.lose_power().await;
        }
        let mut state = self.state.lock().unwrap();
        let (from, to) = (from as usize, to as usize);
        if from % SECTOR != 0 || to % SECTOR != 0 || from > to {
            return Err(RamFlashError(NorFlashErrorKind::NotAligned));
        }
        let range = state
            .bytes
            .get_mut(from..to)
            .ok_or(RamFlashError(NorFlashErrorKind::OutOfBounds))?;
        range.fill(0xFF);
        Ok(())
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if self.cut_before_this_op() {
            self.lose_power().await;
        }
        let cut = {
            let mut state = self.state.lock().unwrap();
            let at = offset as usize;
            if !at.is_multiple_of(WRITE_UNIT) || !bytes.len().is_multiple_of(WRITE_UNIT) {
                return Err(RamFlashError(NorFlashErrorKind::NotAligned));
            }
            if at + bytes.len() > state.bytes.len() {
                return Err(RamFlashError(NorFlashErrorKind::OutOfBounds));
            }
            state.writes += 1;
            let cut = state.cut_at_write == Some(state.writes);
            // A torn write: only the first half of the units made it.
            let n = if cut {
                bytes.len() / 2 / WRITE_UNIT * WRITE_UNIT
            } else {
                bytes.len()
            };
            for (cell, byte) in state.bytes[at..at + n].iter_mut().zip(bytes) {
                *cell &= *byte; // bits only go from 1 to 0
            }
            if cut {
                state.cut_fired_at = Some(offset);
            }
            if let Some((_, at)) = state
                .lose_bit_after_write
                .filter(|(n, _)| *n == state.writes)
            {
                state.bytes[at] ^= 0x10;
            }
            cut
        };
        if cut {
            self.power_cut.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

// ---- bootloader and application -----------------------------------------------------------

#[derive(Default, Debug)]
pub struct BootState {
    pub updated: bool,
    pub booted: bool,
    pub rollbacks: u32,
    pub resets: u32,
}

/// A bootloader that records what it was asked; `mark_booted` is announced on a channel.
#[derive(Clone)]
pub struct FakeBoot {
    pub state: Arc<Mutex<BootState>>,
    pub booted_tx: mpsc::Sender<()>,
}

impl Bootloader for FakeBoot {
    type Error = ();

    async fn mark_updated(&mut self) -> Result<(), ()> {
        self.state.lock().unwrap().updated = true;
        Ok(())
    }

    async fn mark_booted(&mut self) -> Result<(), ()> {
        self.state.lock().unwrap().booted = true;
        let _ = self.booted_tx.send(());
        Ok(())
    }

    async fn mark_rollback(&mut self) -> Result<(), ()> {
        self.state.lock().unwrap().rollbacks += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.state.lock().unwrap().resets += 1;
    }
}

/// Logs notifications; every image is healthy.
#[derive(Clone, Default)]
pub struct LogApp(pub Arc<Mutex<Vec<String>>>);

impl Application for LogApp {
    fn notify(&mut self, note: &Notification<'_>) {
        let line = match note {
            Notification::Progress { percent, .. } => format!("progress {percent}"),
            Notification::Outcome(Outcome::Failed { code, reason }) => {
                format!("failed {code:?}: {reason}")
            }
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(line);
    }

    async fn check_health(&mut self, version: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .push(format!("health check {version}"));
        true
    }
}

// ---- a device -------------------------------------------------------------------------------

/// How a session of the device ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    Reboot,
    PowerCut,
    Stopped,
    /// `Driver::new` refused the configuration.
    Refused(ota_embedded::Error),
}

/// The device's persistent parts: they survive reboots and power cuts.
#[derive(Clone)]
pub struct Device {
    pub info: DeviceInfo,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// MQTT and downloads over TLS trusting this CA (DER), when set.
    pub ca: Option<Vec<u8>>,
    /// The downloads trust this CA instead, when set.
    pub download_ca: Option<Vec<u8>>,
    pub wall: Wall,
    /// The TLS client.
    pub tls_lib: TlsLib,
    /// Ask the platform's time after connecting (`Settings::ask_time`), into a
    /// `SyncedClock` over the device's clock.
    pub ask_time: bool,
    /// Set once the driver has set the clock from the platform's time reply.
    pub time_learnt: Arc<AtomicBool>,
    pub slot: RamFlash,
    pub records: RamFlash,
    pub boot: FakeBoot,
    pub app: LogApp,
    /// The package-signing key's modulus (`Settings::signing_key`).
    #[cfg(feature = "signature")]
    pub signing_key: Option<&'static [u8]>,
}

impl Device {
    /// A device of a simulator with TLS: MQTT on its TLS port, trusting its CA.
    pub fn new_tls(sim: &Sim, info: DeviceInfo) -> (Device, mpsc::Receiver<()>) {
        let (mut device, booted) = Device::new(sim, info);
        device.mqtt_port = sim.mqtts_port().expect("the simulator runs TLS");
        device.ca = Some(der_of_pem(&sim.ca_pem().expect("the simulator's CA")));
        (device, booted)
    }

    pub fn new(sim: &Sim, info: DeviceInfo) -> (Device, mpsc::Receiver<()>) {
        let (booted_tx, booted_rx) = mpsc::channel();
        // One power supply: a cut stops the slot and the record flash alike.
        let slot = RamFlash::new(SLOT_SIZE);
        let mut records = RamFlash::new(2 * SECTOR);
        records.power = Arc::clone(&slot.power);
        records.power_cut = Arc::clone(&slot.power_cut);
        let device = Device {
            info,
            mqtt_host: sim.mqtt_host().to_owned(),
            mqtt_port: sim.mqtt_port(),
            ca: None,
            download_ca: None,
            wall: Wall::System,
            tls_lib: TlsLib::EmbeddedTls,
            ask_time: false,
            time_learnt: Arc::default(),
            slot: slot.clone(),
            records,
            boot: FakeBoot {
                state: Arc::default(),
                booted_tx,
            },
            app: LogApp::default(),
            #[cfg(feature = "signature")]
            signing_key: None,
        };
        (device, booted_rx)
    }

    pub fn config(&self) -> Config {
        let id = &self.info.id;
        let identity = DeviceIdentity::new(&id.product_key, &id.device_name).unwrap();
        let mut config = Config::new(identity);
        // The simulator serves plain http, and https to devices logged in over TLS (which
        // then must not fall back).
        config.rules.allow_http = self.ca.is_none();
        config.write_block = SECTOR;
        config.checkpoint_interval = CHECKPOINT;
        config.retry.base_delay = Duration::from_millis(20);
        config.url_refresh.base_delay = Duration::from_millis(20);
        config.progress_interval = Duration::from_millis(100);
        config.seed = 7;
        config
    }

    /// Boots the device running `version` on its own thread; the session ends at a reboot,
    /// a power cut, or when `stop` is sent.
    pub fn boot(
        &self,
        version: &str,
    ) -> (JoinHandle<SessionEnd>, tokio::sync::oneshot::Sender<()>) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let device = self.clone();
        let version = version.to_owned();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(device.session(&version, stop_rx))
        });
        (handle, stop_tx)
    }

    async fn session(&self, version: &str, stop: tokio::sync::oneshot::Receiver<()>) -> SessionEnd {
        let (stack, dns) = (TokioStack, LoopbackDns);
        let clock = WatchedClock {
            synced: ota_embedded::SyncedClock::new(TokioClock::new(self.wall)),
            learnt: Arc::clone(&self.time_learnt),
        };
        let clock = &clock;
        #[cfg(feature = "mbedtls")]
        if let (Some(ca), TlsLib::Mbedtls { tls12_only }) = (&self.ca, self.tls_lib) {
            use ota_embedded::mbedtls::{CaChain, MbedtlsConnector, TlsVersion};
            let cas = CaChain::new(&[ca]).unwrap();
            let download_cas = CaChain::new(&[self.download_ca.as_deref().unwrap_or(ca)]).unwrap();
            let connector = |cas| {
                let c =
                    MbedtlsConnector::new(TcpConnector::new(&stack, &dns), mbedtls(), cas, clock);
                match tls12_only {
                    true => c.with_versions(TlsVersion::Tls1_2, TlsVersion::Tls1_2),
                    false => c,
                }
            };
            let (mqtt, http) = (connector(&cas), connector(&download_cas));
            return self
                .run(&mqtt, Security::Tls, http, clock, version, stop)
                .await;
        }
        match &self.ca {
            None => {
                let mqtt = TcpConnector::new(&stack, &dns);
                let http = TcpConnector::new(&stack, &dns);
                self.run(&mqtt, Security::Plain, http, clock, version, stop)
                    .await
            }
            Some(ca) => {
                let cas = [ca.as_slice()];
                let download_cas = [self.download_ca.as_deref().unwrap_or(ca)];
                let (mut mqtt_buffers, mut http_buffers) = (record_buffers(), record_buffers());
                let mqtt = tls_connector(&stack, &dns, &cas, clock, &mut mqtt_buffers);
                let http = tls_connector(&stack, &dns, &download_cas, clock, &mut http_buffers);
                self.run(&mqtt, Security::Tls, http, clock, version, stop)
                    .await
            }
        }
    }

    async fn run<M: Connect, H: Connect>(
        &self,
        mqtt: &M,
        security: Security,
        http: H,
        clock: &WatchedClock,
        version: &str,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> SessionEnd {
        let id = &self.info.id;
        let login = Login::new(
            &id.product_key,
            &id.device_name,
            &self.info.device_secret,
            ota_embedded::login::SDK_TIMESTAMP,
            SecureMode::Plain,
        )
        .unwrap();
        let mqtt: MqttClient<'_, _, 4096, 1024> =
            MqttClient::new(mqtt, &self.mqtt_host, self.mqtt_port, security, 60);
        let parts = Parts {
            mqtt,
            http,
            slot: Slot::new(self.slot.clone(), 0, SLOT_SIZE as u32).unwrap(),
            records: RecordStore::new(self.records.clone(), 0).unwrap(),
            boot: self.boot.clone(),
            clock,
            app: self.app.clone(),
            login,
            settings: Settings {
                reconnect_min: Duration::from_millis(50),
                ask_time: self.ask_time,
                #[cfg(feature = "signature")]
                signing_key: self.signing_key,
                ..Settings::default()
            },
        };
        // The power can go while the record is read at boot, too.
        let built = tokio::select! {
            built = Driver::new(self.config(), version, parts) => built,
            _ = self.slot.power_cut.notified() => return SessionEnd::PowerCut,
        };
        let mut driver = match built {
            Ok(driver) => driver,
            Err(e) => return SessionEnd::Refused(e),
        };
        tokio::select! {
            exit = driver.run() => {
                assert_eq!(exit, Ok(Exit::Reboot));
                SessionEnd::Reboot
            }
            _ = self.slot.power_cut.notified() => SessionEnd::PowerCut,
            _ = stop => SessionEnd::Stopped,
        }
    }

    /// The version the bootloader would start next.
    pub fn booted_version<'a>(&self, old: &'a str, new: &'a str) -> &'a str {
        if self.boot.state.lock().unwrap().updated {
            new
        } else {
            old
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.app.0.lock().unwrap().clone()
    }
}

/// A firmware image with a recognisable pattern (not a multiple of the sector: the last
/// block is short).
pub fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}
