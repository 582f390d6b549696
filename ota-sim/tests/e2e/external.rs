//! The cloud attached to a broker it does not run (here a bare rumqttd without login checks).

use crate::device::{firmware, Device, WAIT};
use ota_sim::{BrokerConfig, Credentials, JobSpec, PackageSpec, Sim, SimConfig, TaskState};
use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn bare_broker() -> SocketAddr {
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = ServerSettings {
        name: "bare".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..rumqttd::Config::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            eprintln!("bare broker: {e}");
        }
    });
    // Readiness guard: rumqttd binds on its own thread.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "bare broker did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    listen
}

#[test]
fn cloud_works_through_an_external_broker() {
    let addr = bare_broker();
    let config = SimConfig {
        broker: BrokerConfig::External {
            url: format!("mqtt://{addr}"),
        },
        ..SimConfig::default()
    };
    let sim = Sim::start(config).unwrap();
    assert_eq!(
        (sim.mqtt_host(), sim.mqtt_port()),
        ("127.0.0.1", addr.port())
    );
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(100)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let creds = Credentials::new(&info.id, &info.device_secret);
    let mut dev = Device::connect(sim.mqtt_host(), sim.mqtt_port(), &info.id, &creds).unwrap();
    dev.subscribe();
    dev.inform("1.0.0");
    assert_eq!(dev.expect_push()["data"]["version"], "2.0.0");
    dev.inform("2.0.0");
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
}
