//! What the simulator's threads share, and the two threads it runs: the job engine (which also
//! answers MQTT-channel block requests), fed by a channel of device messages with deadlines as
//! receive timeouts, and the firmware server.

use crate::broker::Publisher;
use crate::faults::FaultTable;
use crate::history::History;
use crate::http::{self, DownloadRecord};
use crate::jobs::Engine;
use crate::messages::{self, Uplink};
use crate::mqtt_download::BlockServer;
use crate::signing::UrlSigner;
use crate::{DeviceId, Error};

/// Firmware answers and block answers kept for tests and `/status`.
pub(crate) const RECORDS_KEPT: usize = 20_000;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// What the engine thread reacts to.
pub(crate) enum Input {
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// A login checked out; whether it came over TLS.
    Login(DeviceId, bool),
    /// A device's MQTT connection through a front was accepted.
    Connected(DeviceId),
    /// That connection ended.
    Disconnected(DeviceId),
    Wake,
    Stop,
}

/// The state behind one lock: engine, faults, the firmware server's request log and the
/// MQTT-channel block server.
pub(crate) struct World {
    pub(crate) engine: Engine,
    pub(crate) faults: FaultTable,
    /// The firmware server's latest answers (older ones are only counted).
    pub(crate) downloads: History<DownloadRecord>,
    pub(crate) blocks: BlockServer,
}

impl World {
    /// The `/status` document: the engine's view and the faults.
    pub(crate) fn status(&self) -> serde_json::Value {
        let mut status = self.engine.status();
        status["faults"] = self.faults.report();
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
        for out in world
            .engine
            .take_outbound()
            .into_iter()
            .chain(block_replies)
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
            Ok(Input::Message { topic, payload }) => match messages::parse_uplink(&topic, &payload)
            {
                Ok((device, Uplink::Block(request))) => {
                    let World {
                        engine,
                        faults,
                        blocks,
                        ..
                    } = &mut *world;
                    blocks.serve(engine, faults, &device, &request, now);
                }
                Ok((device, uplink)) => world.engine.handle_uplink(&device, uplink, now),
                Err(e) => tracing::warn!("ignored message on {topic}: {e}"),
            },
            Ok(Input::Login(device, tls)) => world.engine.handle_login(&device, tls),
            Ok(Input::Connected(device)) => world.engine.handle_connection(&device, true),
            Ok(Input::Disconnected(device)) => world.engine.handle_connection(&device, false),
            Ok(Input::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
        world.engine.handle_timeout(now);
        world.blocks.handle_timeout(now);
        world.engine.log.flush(now);
        shared.flush(&mut world);
    }
}

/// Serves HTTP on its own thread with a single-threaded tokio runtime. Header names go out in
/// title case (`Content-Length`, `Content-Range`), as OSS writes them: the official SDKs look
/// for them with a case-sensitive match (docs/protocol.md §5).
pub(crate) fn spawn_http(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> Result<tokio::sync::oneshot::Sender<()>, Error> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ota-sim-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("firmware server: {e}"),
                };
                let router = http::router(shared);
                let serve = async {
                    loop {
                        let tcp = match listener.accept().await {
                            Ok((tcp, _)) => tcp,
                            Err(e) => {
                                // Out of file descriptors and the like: wait, do not spin.
                                tracing::warn!("firmware server accept: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        let _ = tcp.set_nodelay(true);
                        let service = hyper_util::service::TowerToHyperService::new(router.clone());
                        tokio::spawn(async move {
                            let connection = hyper::server::conn::http1::Builder::new()
                                .title_case_headers(true)
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                            if let Err(e) = connection.await {
                                tracing::debug!("firmware connection: {e}");
                            }
                        });
                    }
                };
                futures_util::future::select(std::pin::pin!(serve), stop_rx).await;
            });
        })?;
    Ok(stop_tx)
}
