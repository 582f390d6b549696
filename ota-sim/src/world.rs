//! The world: the one owner of the simulator's state (job engine, faults, request logs, block
//! server, gateways) behind one lock, and the engine thread that runs it, fed by the channel of
//! [`Input`]s with deadlines as receive timeouts. The broker and the MQTT fronts only send into
//! that channel, and the world publishes through the broker's `Publisher`; the firmware server
//! sees the world through the `Firmware` traits it defines, which the world implements here.

use crate::broker::Publisher;
use crate::faults::FaultTable;
use crate::history::{History, RECORDS_KEPT};
use crate::http::{DownloadRecord, Firmware, FirmwareState};
use crate::input::Input;
use crate::jobs::Engine;
use crate::messages::{self, Uplink};
use crate::mqtt_download::BlockServer;
use crate::signing::UrlSigner;
use crate::DeviceId;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The state behind one lock: engine, faults, the firmware server's request log and the
/// MQTT-channel block server.
pub(crate) struct World {
    pub(crate) engine: Engine,
    pub(crate) faults: FaultTable,
    /// The firmware server's latest answers (older ones are only counted).
    pub(crate) downloads: History<DownloadRecord>,
    pub(crate) blocks: BlockServer,
    /// Gateway topologies and sub-device sessions (docs/protocol.md §14).
    pub(crate) gateways: crate::gateway::Gateways,
}

impl World {
    /// The `/status` document: the engine's view and the faults.
    pub(crate) fn status(&self) -> serde_json::Value {
        let mut status = self.engine.status();
        status["faults"] = self.faults.report();
        status["gateways"] = self.gateways.report(&self.engine, &self.downloads);
        status
    }

    /// The earliest moment the engine or the block server has something to do.
    fn next_deadline(&self) -> Option<Instant> {
        let engine = self.engine.next_deadline();
        let log = self.engine.log.next_deadline();
        engine
            .into_iter()
            .chain(self.blocks.next_deadline())
            .chain(log)
            .min()
    }
}

/// What the threads of one simulator share.
pub(crate) struct Shared {
    world: Mutex<World>,
    /// Signalled after every change, for the `wait_*` methods.
    pub(crate) changed: Condvar,
    pub(crate) signer: UrlSigner,
    publisher: OnceLock<Publisher>,
    /// Device secrets, apart from the world so login checks never wait for the engine.
    secrets: std::sync::RwLock<std::collections::HashMap<DeviceId, String>>,
}

impl Shared {
    /// The shared state of a simulator whose firmware server is at `http_base`.
    pub(crate) fn new(http_base: String, url_ttl: Duration) -> Shared {
        let signer = UrlSigner::new();
        Shared {
            world: Mutex::new(World {
                engine: Engine::new(signer.clone(), http_base, url_ttl),
                faults: FaultTable::default(),
                downloads: History::new(RECORDS_KEPT),
                blocks: BlockServer::default(),
                gateways: Default::default(),
            }),
            changed: Condvar::new(),
            signer,
            publisher: OnceLock::new(),
            secrets: Default::default(),
        }
    }

    /// The secret of a registered device.
    pub(crate) fn secret(&self, device: &DeviceId) -> Option<String> {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        secrets.get(device).cloned()
    }

    /// Registers a device's secret for login checks.
    pub(crate) fn add_secret(&self, device: &DeviceId, secret: &str) {
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        secrets.insert(device.clone(), secret.to_owned());
    }

    /// Sets how cloud messages leave; messages queued before are dropped with a warning.
    pub(crate) fn set_publisher(&self, publisher: Publisher) {
        let _ = self.publisher.set(publisher);
    }

    /// Locks the world; a panic elsewhere does not make the state unreadable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what the engine queued and wakes waiters. Called with the lock held, so
    /// messages leave in the order the state changed.
    pub(crate) fn flush(&self, world: &mut World) {
        let block_replies = world.blocks.take_outbound();
        let session_replies = world.gateways.take_outbound();
        for out in world
            .engine
            .take_outbound()
            .into_iter()
            .chain(block_replies)
            .chain(session_replies)
        {
            let payload =
                crate::package_signing::spoil_signature(&mut world.faults, &out.topic, out.payload);
            match self.publisher.get() {
                Some(p) => p.publish(out.topic, payload),
                None => tracing::warn!("no broker yet; dropped message to {}", out.topic),
            }
        }
        self.changed.notify_all();
    }
}

/// The engine thread: device messages and deadlines in, state changes and messages out.
pub(crate) fn run_engine(shared: Arc<Shared>, inputs: mpsc::Receiver<Input>) {
    loop {
        let deadline = shared.lock().next_deadline();
        let input = match deadline {
            Some(d) => inputs.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => inputs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let now = Instant::now();
        let mut world = shared.lock();
        match input {
            Ok(Input::Message { topic, payload }) if crate::gateway::Gateways::handles(&topic) => {
                let World {
                    engine, gateways, ..
                } = &mut *world;
                let secret_of = |device: &DeviceId| shared.secret(device);
                gateways.handle(engine, &secret_of, &topic, &payload, now);
            }
            Ok(Input::Message { topic, payload }) => match messages::parse_uplink(&topic, &payload)
            {
                Ok((device, _)) if !world.gateways.admit(&device) => {}
                Ok((device, Uplink::Block(request))) => {
                    let World {
                        engine,
                        faults,
                        blocks,
                        ..
                    } = &mut *world;
                    blocks.serve(engine, faults, &device, &request, now);
                }
                Ok((device, uplink)) => {
                    let step = crate::gateway::progress_step(&uplink);
                    let World {
                        engine, gateways, ..
                    } = &mut *world;
                    engine.handle_uplink(&device, uplink, now);
                    gateways.after_uplink(engine, &device, step);
                }
                Err(e) => tracing::warn!("ignored message on {topic}: {e}"),
            },
            Ok(Input::Login(device, tls)) => {
                let World {
                    engine, gateways, ..
                } = &mut *world;
                engine.handle_login(&device, tls);
                // A new connection of a gateway holds none of its old sub-device sessions.
                gateways.gateway_connected(engine, &device);
            }
            Ok(Input::Connected(device)) => world.engine.handle_connection(&device, true),
            Ok(Input::Disconnected(device)) => {
                let World {
                    engine, gateways, ..
                } = &mut *world;
                engine.handle_connection(&device, false);
                // Its sub-devices go offline with the gateway's connection (§14).
                gateways.gateway_connected(engine, &device);
            }
            Ok(Input::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
        world.engine.handle_timeout(now);
        world.blocks.handle_timeout(now);
        world.engine.log.flush(now);
        shared.flush(&mut world);
    }
}

impl Firmware for Shared {
    type State = World;

    fn lock(&self) -> MutexGuard<'_, World> {
        Shared::lock(self)
    }

    fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    fn notify(&self) {
        self.changed.notify_all();
    }
}

impl FirmwareState for World {
    fn status(&self) -> serde_json::Value {
        World::status(self)
    }

    fn file(&self, path: &str) -> Option<(String, bytes::Bytes)> {
        let (id, i) = self.engine.find_file(path)?;
        let file = self.engine.packages.get(id.0 as usize)?.files.get(i)?;
        Some((file.name.clone(), file.data.clone()))
    }

    fn is_revoked(&self, device: &DeviceId, path: &str, expires: u64) -> bool {
        self.engine.is_revoked(device, path, expires)
    }

    fn revoke(&mut self, device: &DeviceId, path: &str, expires: u64) {
        self.engine.revoke(device, path, expires);
    }

    fn faults(&mut self) -> &mut FaultTable {
        &mut self.faults
    }

    fn log_refusal(&mut self, device: &DeviceId, now: Instant) -> bool {
        self.engine.log.admit(device, "refused downloads", now)
    }

    fn record(&mut self, record: DownloadRecord) {
        self.downloads.push(record);
    }
}
