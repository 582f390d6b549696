//! Gateways and sub-devices (docs/protocol.md §14) with a plain MQTT client: topology, login
//! with the sub-device's sign, the sub-device's OTA topics over the gateway's connection, and
//! the refusals and notices of the cloud.

use crate::device::{Device, WAIT};
use crate::sim;
use hmac::{Hmac, KeyInit, Mac};
use ota_sim::{DeviceInfo, GatewayFault, JobSpec, PackageSpec, Sim, TaskState, Times};
use serde_json::{json, Value};
use sha2::Sha256;

/// The gateway's side of the session topics.
struct Gateway {
    dev: Device,
    next_id: u64,
}

fn sign(sub: &DeviceInfo, secret: &str, timestamp: &str) -> String {
    let (pk, dn) = (&sub.id.product_key, &sub.id.device_name);
    let text = format!("clientId{pk}&{dn}deviceName{dn}productKey{pk}timestamp{timestamp}");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entry(sub: &DeviceInfo, secret: &str, method_key: &str) -> Value {
    let (pk, dn) = (&sub.id.product_key, &sub.id.device_name);
    json!({"productKey": pk, "deviceName": dn, "clientId": format!("{pk}&{dn}"),
           "timestamp": "1700000000000", method_key: "hmacSha256",
           "sign": sign(sub, secret, "1700000000000")})
}

impl Gateway {
    fn online(sim: &Sim, info: &DeviceInfo) -> Gateway {
        let mut dev = Device::online(sim, info);
        let (pk, dn) = (&info.id.product_key, &info.id.device_name);
        for topic in [
            format!("/sys/{pk}/{dn}/thing/topo/add_reply"),
            format!("/sys/{pk}/{dn}/thing/topo/get_reply"),
            format!("/sys/{pk}/{dn}/thing/topo/delete_reply"),
            format!("/ext/session/{pk}/{dn}/combine/batch_login_reply"),
            format!("/ext/session/{pk}/{dn}/combine/batch_logout_reply"),
            format!("/ext/session/{pk}/{dn}/combine/login_reply"),
            format!("/ext/session/{pk}/{dn}/combine/logout_reply"),
            format!("/ext/error/{pk}/{dn}"),
        ] {
            dev.subscribe_to(&topic);
        }
        Gateway { dev, next_id: 0 }
    }

    /// Sends a request on `/sys/.../thing/topo/{op}` or `/ext/session/.../combine/{op}` and
    /// returns the reply with the same id.
    fn request(&mut self, op: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let (pk, dn) = (&self.dev.id.product_key, &self.dev.id.device_name);
        let topic = match op {
            "add" | "get" | "delete" => format!("/sys/{pk}/{dn}/thing/topo/{op}"),
            _ => format!("/ext/session/{pk}/{dn}/combine/{op}"),
        };
        let body = json!({"id": id, "version": "1.0", "params": params});
        self.dev.publish_raw(&topic, body.to_string().as_bytes());
        loop {
            let (t, reply) = self.dev.recv(WAIT).expect("a reply");
            if t == format!("{topic}_reply") && reply["id"] == json!(id) {
                return reply;
            }
        }
    }

    fn login(&mut self, sub: &DeviceInfo, secret: &str) -> Value {
        let mut params = entry(sub, secret, "signMethod");
        params["cleanSession"] = json!("true");
        self.request("login", params)
    }

    /// The next notice on `/ext/error`.
    fn expect_notice(&self) -> Value {
        let topic = format!(
            "/ext/error/{}/{}",
            self.dev.id.product_key, self.dev.id.device_name
        );
        loop {
            let (t, notice) = self.dev.recv(WAIT).expect("a notice");
            if t == topic {
                return notice;
            }
        }
    }

    /// Subscribes to `sub`'s OTA downlink topics over the gateway's connection.
    fn subscribe_for(&mut self, sub: &DeviceInfo) {
        let (pk, dn) = (&sub.id.product_key, &sub.id.device_name);
        self.dev
            .subscribe_to(&format!("/ota/device/upgrade/{pk}/{dn}"));
        self.dev
            .subscribe_to(&format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply"));
    }

    fn publish_for(&self, sub: &DeviceInfo, kind: &str, payload: Value) {
        let (pk, dn) = (&sub.id.product_key, &sub.id.device_name);
        let topic = match kind {
            "get" => format!("/sys/{pk}/{dn}/thing/ota/firmware/get"),
            _ => format!("/ota/device/{kind}/{pk}/{dn}"),
        };
        self.dev.publish_raw(&topic, payload.to_string().as_bytes());
    }

    /// The next message on `topic`.
    fn expect_on(&self, topic: &str) -> Value {
        loop {
            let (t, message) = self.dev.recv(WAIT).expect("a message");
            if t == topic {
                return message;
            }
        }
    }
}

fn gateway_with(sim: &Sim, subs: usize) -> (DeviceInfo, Vec<DeviceInfo>) {
    let gw = sim.add_gateway().unwrap();
    let subs = (0..subs).map(|_| sim.add_subdevice(&gw).unwrap()).collect();
    (gw, subs)
}

#[test]
fn topology_login_firmware_get_and_push_for_a_sub_device() {
    let sim = sim();
    let (gw_info, subs) = gateway_with(&sim, 2);
    let sub = &subs[0];
    let package = sim
        .add_package(PackageSpec::new("2.0.0", vec![7u8; 4096]))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let mut gw = Gateway::online(&sim, &gw_info);

    let reply = gw.request("get", json!({}));
    assert_eq!(
        (reply["code"].clone(), reply["data"].clone()),
        (json!(200), json!([]))
    );
    // Before the topology exists, the login is refused with 6401.
    assert_eq!(gw.login(sub, &sub.device_secret)["code"], 6401);

    let params = json!([
        entry(&subs[0], &subs[0].device_secret, "signmethod"),
        entry(&subs[1], &subs[1].device_secret, "signmethod")
    ]);
    let reply = gw.request("add", params);
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["data"].as_array().unwrap().len(), 2);
    assert_eq!(sim.topology(&gw_info).len(), 2);
    let listed = gw.request("get", json!({}));
    assert_eq!(
        listed["data"][1]["deviceName"],
        json!(subs[1].id.device_name)
    );

    // A message for the sub-device before its login: a 520 notice, and it is dropped.
    gw.publish_for(
        sub,
        "inform",
        json!({"id": "1", "params": {"version": "1.0.0"}}),
    );
    let notice = gw.expect_notice();
    assert_eq!(notice["code"], 520);
    assert_eq!(notice["data"]["deviceName"], json!(sub.id.device_name));
    assert_eq!(sim.device_version(sub, "default"), None);

    let reply = gw.login(sub, &sub.device_secret);
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["data"]["deviceName"], json!(sub.id.device_name));
    assert_eq!(sim.subdevice_session(sub), Some(gw_info.id.clone()));
    gw.subscribe_for(sub);

    // The sub-device's inform over the gateway's connection counts as the sub-device's: push.
    gw.publish_for(
        sub,
        "inform",
        json!({"id": "2", "params": {"version": "1.0.0"}}),
    );
    let (pk, dn) = (&sub.id.product_key, &sub.id.device_name);
    let push = gw.expect_on(&format!("/ota/device/upgrade/{pk}/{dn}"));
    assert_eq!(push["data"]["version"], "2.0.0");
    gw.publish_for(
        sub,
        "get",
        json!({"id": "77", "version": "1.0", "params": {}}),
    );
    let reply = gw.expect_on(&format!("/sys/{pk}/{dn}/thing/ota/firmware/get_reply"));
    assert_eq!(
        (reply["code"].clone(), reply["id"].clone()),
        (json!(200), json!("77"))
    );
    assert_eq!(reply["data"]["url"], push["data"]["url"]);
    gw.publish_for(
        sub,
        "progress",
        json!({"id": "3", "params": {"step": "50", "desc": ""}}),
    );
    gw.publish_for(
        sub,
        "inform",
        json!({"id": "4", "params": {"version": "2.0.0"}}),
    );
    sim.wait_task_state(job, sub, TaskState::Succeeded, WAIT)
        .unwrap();

    // /status shows the sub-device's session and task state under its gateway.
    let status = sim.status();
    let listed = &status["gateways"]["gateways"][0]["subdevices"][0];
    assert_eq!(listed["online"], true, "{status}");
    assert_eq!(listed["tasks"][0]["state"], "SUCCEEDED", "{status}");

    // Logout: offline, and its messages are refused again.
    let reply = gw.request("logout", json!({"productKey": pk, "deviceName": dn}));
    assert_eq!(reply["code"], 200);
    assert_eq!(sim.subdevice_session(sub), None);
    gw.publish_for(
        sub,
        "inform",
        json!({"id": "5", "params": {"version": "2.0.0"}}),
    );
    assert_eq!(gw.expect_notice()["code"], 520);
}

#[test]
fn a_bad_sign_is_refused_with_6287_and_401() {
    let sim = sim();
    let (gw_info, subs) = gateway_with(&sim, 1);
    let sub = &subs[0];
    let mut gw = Gateway::online(&sim, &gw_info);
    let reply = gw.request("add", json!([entry(sub, "not-the-secret", "signmethod")]));
    assert_eq!(reply["code"], 401, "{reply}");
    assert!(sim.topology(&gw_info).is_empty());
    let reply = gw.request("add", json!([entry(sub, &sub.device_secret, "signmethod")]));
    assert_eq!(reply["code"], 200, "{reply}");
    let reply = gw.login(sub, "not-the-secret");
    assert_eq!(reply["code"], 6287, "{reply}");
    assert_eq!(sim.subdevice_session(sub), None);
    // Upper-case hex of the right sign is as good as lower-case.
    let mut params = entry(sub, &sub.device_secret, "signMethod");
    params["sign"] = json!(params["sign"].as_str().unwrap().to_uppercase());
    assert_eq!(gw.request("login", params)["code"], 200);
    // A gateway cannot add itself.
    let reply = gw.request(
        "add",
        json!([entry(&gw_info, &gw_info.device_secret, "signmethod")]),
    );
    assert_eq!(reply["code"], 6402, "{reply}");
}

#[test]
fn more_than_five_logins_a_minute_get_429() {
    let sim = sim();
    let (gw_info, subs) = gateway_with(&sim, 1);
    let sub = &subs[0];
    let mut gw = Gateway::online(&sim, &gw_info);
    gw.request("add", json!([entry(sub, &sub.device_secret, "signmethod")]));
    for _ in 0..5 {
        assert_eq!(gw.login(sub, &sub.device_secret)["code"], 200);
    }
    assert_eq!(gw.login(sub, &sub.device_secret)["code"], 429);
    assert_eq!(sim.subdevice_logins(sub), 5);
}

#[test]
fn faults_reach_every_login_code_and_kick_mid_download() {
    let sim = sim();
    let (gw_info, subs) = gateway_with(&sim, 1);
    let sub = &subs[0];
    let package = sim
        .add_package(PackageSpec::new("2.0.0", vec![7u8; 4096]))
        .unwrap();
    sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let mut gw = Gateway::online(&sim, &gw_info);
    gw.request("add", json!([entry(sub, &sub.device_secret, "signmethod")]));
    for code in [429, 428, 460, 500, 6100, 6287, 6401, 521, 522] {
        let fault = sim.set_gateway_fault(Some(&sub.id), GatewayFault::Login(code), Times::Once);
        assert_eq!(gw.login(sub, &sub.device_secret)["code"], code);
        assert_eq!(sim.gateway_fault_fired(fault), 1);
    }
    let kick = sim.set_gateway_fault(
        Some(&sub.id),
        GatewayFault::Kick {
            code: 520,
            at_step: 30,
        },
        Times::Once,
    );
    assert_eq!(gw.login(sub, &sub.device_secret)["code"], 200);
    gw.publish_for(
        sub,
        "inform",
        json!({"id": "1", "params": {"version": "1.0.0"}}),
    );
    gw.publish_for(
        sub,
        "progress",
        json!({"id": "2", "params": {"step": "10", "desc": ""}}),
    );
    gw.publish_for(
        sub,
        "progress",
        json!({"id": "3", "params": {"step": "40", "desc": ""}}),
    );
    let notice = gw.expect_notice();
    assert_eq!(notice["code"], 520);
    assert_eq!(sim.gateway_fault_fired(kick), 1);
    assert_eq!(sim.subdevice_session(sub), None);
    assert_eq!(sim.progress_steps(sub), [10, 40]);
}

#[test]
fn serve_lists_gateways_and_sub_devices_and_takes_their_faults() {
    let dir = tempfile::tempdir().unwrap();
    let fw = dir.path().join("fw.bin");
    std::fs::write(&fw, crate::device::firmware(4096)).unwrap();
    let args = [
        "--version",
        "2.0.0",
        "--gateways",
        "1",
        "--subdevices-per-gateway",
        "2",
    ];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
    args.extend([
        "--fault".as_ref(),
        "gw0001-node02:login-6287@always".as_ref(),
        "--firmware".as_ref(),
        fw.as_os_str(),
    ]);
    let (server, _lines, info) = crate::cli::serve(&args, dir.path());
    let gateway = &info["gateways"][0];
    assert_eq!(gateway["device_name"], "gw0001");
    let subs = gateway["subdevices"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[1]["device_name"], "gw0001-node02");
    assert_eq!(subs[1]["device_secret"].as_str().unwrap().len(), 32);
    let status = crate::device::http_get(
        &format!("{}/status", info["http_base_url"].as_str().unwrap()),
        None,
        WAIT,
    );
    let status: Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(
        status["gateways"]["faults"][0]["fault"], "login-6287",
        "{status}"
    );
    drop(server);
    crate::cli::fails_with_one_line(
        &[
            "serve",
            "--firmware",
            "/x",
            "--version",
            "1",
            "--fault",
            "login-200",
        ],
        "login takes one of the codes",
    );
    let fw = fw.to_str().unwrap();
    crate::cli::fails_with_one_line(
        &[
            "serve",
            "--firmware",
            fw,
            "--version",
            "1",
            "--fault",
            "gw0009-node01:kick-520",
        ],
        "gw0009-node01",
    );
}

#[test]
fn batch_login_batch_logout_and_topology_delete() {
    let sim = sim();
    let (gw_info, subs) = gateway_with(&sim, 3);
    let mut gw = Gateway::online(&sim, &gw_info);
    let all: Vec<Value> = subs
        .iter()
        .map(|s| entry(s, &s.device_secret, "signmethod"))
        .collect();
    assert_eq!(gw.request("add", json!(all))["code"], 200);
    // Two good signs and one bad: the good ones are in, the reply names the failure.
    let mut list: Vec<Value> = subs
        .iter()
        .map(|s| entry(s, &s.device_secret, "signMethod"))
        .collect();
    list[2] = entry(&subs[2], "wrong", "signMethod");
    let reply = gw.request("batch_login", json!({ "deviceList": list }));
    assert_eq!(reply["code"], 6287, "{reply}");
    assert_eq!(reply["data"].as_array().unwrap().len(), 2, "{reply}");
    assert!(sim.subdevice_session(&subs[0]).is_some() && sim.subdevice_session(&subs[1]).is_some());
    assert_eq!(sim.subdevice_session(&subs[2]), None);
    // More than 50 in one batch is a bad request.
    let many: Vec<Value> = (0..51).map(|_| list[0].clone()).collect();
    assert_eq!(
        gw.request("batch_login", json!({ "deviceList": many }))["code"],
        460
    );
    let names =
        |s: &DeviceInfo| json!({"productKey": s.id.product_key, "deviceName": s.id.device_name});
    let reply = gw.request("batch_logout", json!([names(&subs[0])]));
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(sim.subdevice_session(&subs[0]), None);
    // Deleting a logged-in sub-device from the topology ends its session too.
    let reply = gw.request("delete", json!([names(&subs[1])]));
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(sim.subdevice_session(&subs[1]), None);
    assert_eq!(sim.topology(&gw_info).len(), 2);
    assert_eq!(gw.login(&subs[1], &subs[1].device_secret)["code"], 6401);
    assert_eq!(
        gw.request("delete", json!([{"productKey": "x"}]))["code"],
        460
    );
}
