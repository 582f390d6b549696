//! MQTT login (docs/protocol.md §7) through the embedded broker.

use crate::device::Device;
use crate::sim;
use ota_sim::{BrokerConfig, Credentials, DeviceId, LoginSignMethod, Sim, SimConfig};

const VECTOR_SECRET: &str = "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa";

#[test]
fn login_with_protocol_vectors_is_accepted() {
    let sim = sim();
    let id = DeviceId::new("a1TestPK001", "dev01");
    sim.add_device_with(id.clone(), VECTOR_SECRET).unwrap();
    let sha256 = Credentials::new(&id, VECTOR_SECRET);
    assert_eq!(
        sha256.password,
        "587C3C70C673C99D5E9229AF629C57A56B031C4EAE993A16E90614E684C34017"
    );
    Device::connect(sim.mqtt_host(), sim.mqtt_port(), &id, &sha256).expect("hmacsha256 login");
    let sha1 =
        Credentials::with_method(&id, VECTOR_SECRET, LoginSignMethod::HmacSha1, "1700000000");
    assert_eq!(sha1.password, "1d23206fda23a598d767da409743d535162c2884");
    Device::connect(sim.mqtt_host(), sim.mqtt_port(), &id, &sha1).expect("hmacsha1 login");
}

#[test]
fn login_with_wrong_secret_is_refused() {
    let sim = sim();
    let dev = sim.add_device().unwrap();
    let creds = Credentials::new(&dev.id, "wrong-secret");
    let refused = Device::connect(sim.mqtt_host(), sim.mqtt_port(), &dev.id, &creds);
    assert!(refused.is_err());
    Device::connect(
        sim.mqtt_host(),
        sim.mqtt_port(),
        &dev.id,
        &dev.credentials(),
    )
    .expect("right secret");
}

#[test]
fn login_of_unknown_device_is_refused() {
    let sim = sim();
    let stranger = DeviceId::new(sim.add_device().unwrap().id.product_key, "stranger");
    let creds = Credentials::new(&stranger, "whatever");
    assert!(Device::connect(sim.mqtt_host(), sim.mqtt_port(), &stranger, &creds).is_err());
}

#[test]
fn unreachable_external_broker_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = SimConfig {
        broker: BrokerConfig::External {
            url: format!("mqtt://127.0.0.1:{port}"),
        },
        ..SimConfig::default()
    };
    assert!(matches!(Sim::start(config), Err(ota_sim::Error::Broker(_))));
}
