use super::*;
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use proptest::prelude::*;
use serde_json::Value;

const GW: &str = "/sys/a1GatewayPK/gw01/thing/topo/";
const SESSION: &str = "/ext/session/a1GatewayPK/gw01/combine/";

fn sub(i: usize) -> Subdevice {
    Subdevice {
        identity: DeviceIdentity::new("a1SubPK0001", &format!("node{i}")).unwrap(),
        secret: format!("secret-{i}"),
    }
}

fn gateway(n: usize) -> Gateway {
    let config = GatewayConfig::new(
        DeviceIdentity::new("a1GatewayPK", "gw01").unwrap(),
        (0..n).map(sub).collect(),
    );
    Gateway::new(config, Instant::ZERO).unwrap()
}

fn drain(g: &mut Gateway) -> Vec<GatewayAction> {
    core::iter::from_fn(|| g.poll_action()).collect()
}

/// The requests among `actions`: (topic suffix, id, the JSON).
fn requests(actions: &[GatewayAction]) -> Vec<(String, u64, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            GatewayAction::Publish { topic, payload } => {
                let json: Value = serde_json::from_slice(payload).unwrap();
                let id = json["id"].as_str().unwrap().parse().unwrap();
                let suffix = topic.rsplit('/').next().unwrap().to_string();
                Some((suffix, id, json))
            }
            _ => None,
        })
        .collect()
}

fn names(json: &Value) -> Vec<String> {
    match &json["params"] {
        Value::Array(list) => list
            .iter()
            .map(|p| p["deviceName"].as_str().unwrap().to_string())
            .collect(),
        params => vec![params["deviceName"].as_str().unwrap().to_string()],
    }
}

fn reply(g: &mut Gateway, now: u64, topic: &str, id: u64, code: u32, data: Value) {
    let payload = serde_json::json!({"id": id.to_string(), "code": code, "data": data}).to_string();
    g.handle(
        Instant::from_millis(now),
        GatewayEvent::Message {
            topic,
            payload: payload.as_bytes(),
        },
    );
}

/// Answers the login request `id` with 200 and takes the actions that follow.
fn log_in(g: &mut Gateway, id: u64) -> Vec<GatewayAction> {
    reply(g, 1, &format!("{SESSION}login_reply"), id, 200, Value::Null);
    drain(g)
}

fn device(i: usize) -> Value {
    serde_json::json!({"productKey": "a1SubPK0001", "deviceName": format!("node{i}")})
}

/// Connects and answers topo/get with `known`; returns the requests that follow.
fn connect(g: &mut Gateway, known: &[usize]) -> Vec<(String, u64, Value)> {
    g.handle(Instant::ZERO, GatewayEvent::Connected);
    let first = drain(g);
    let subscribed: Vec<&str> = first
        .iter()
        .filter_map(|a| match a {
            GatewayAction::Subscribe { topic } => Some(topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(subscribed.len(), 5);
    let get = requests(&first);
    assert_eq!(get.len(), 1);
    assert_eq!(get[0].0, "get");
    let list = Value::Array(known.iter().map(|&i| device(i)).collect());
    reply(g, 0, &format!("{GW}get_reply"), get[0].1, 200, list);
    requests(&drain(g))
}

#[test]
fn known_sub_devices_log_in_and_the_others_are_added_first() {
    let mut g = gateway(3);
    let sent = connect(&mut g, &[0]);
    assert_eq!(sent.len(), 2);
    let (add, login) = if sent[0].0 == "add" {
        (&sent[0], &sent[1])
    } else {
        (&sent[1], &sent[0])
    };
    assert_eq!(names(&add.2), ["node1", "node2"]);
    assert_eq!(add.2["params"][0]["signmethod"], "hmacSha256");
    assert_eq!(names(&login.2), ["node0"]);
    assert_eq!(login.2["params"]["signMethod"], "hmacSha256");
    assert_eq!(login.2["params"]["clientId"], "a1SubPK0001&node0");

    reply(
        &mut g,
        5,
        &format!("{SESSION}login_reply"),
        login.1,
        200,
        device(0),
    );
    assert_eq!(drain(&mut g), [GatewayAction::SubdeviceOnline { index: 0 }]);
    reply(
        &mut g,
        6,
        &format!("{GW}add_reply"),
        add.1,
        200,
        Value::Object(Default::default()),
    );
    let logins = requests(&drain(&mut g));
    assert_eq!(
        logins
            .iter()
            .map(|r| names(&r.2)[0].clone())
            .collect::<Vec<_>>(),
        ["node1", "node2"]
    );
    for (_, id, _) in &logins {
        reply(
            &mut g,
            7,
            &format!("{SESSION}login_reply"),
            *id,
            200,
            Value::Object(Default::default()),
        );
    }
    assert_eq!(
        drain(&mut g),
        [
            GatewayAction::SubdeviceOnline { index: 1 },
            GatewayAction::SubdeviceOnline { index: 2 }
        ]
    );
    assert!((0..3).all(|i| g.state(i) == Some(&SubdeviceState::Online)));
}

#[test]
fn the_login_sign_is_the_hmac_of_the_sub_devices_own_parameters_and_secret() {
    let mut g = gateway(1);
    let sent = connect(&mut g, &[0]);
    let params = &sent[0].2["params"];
    let text = sign::sign_text(
        params["clientId"].as_str().unwrap(),
        params["deviceName"].as_str().unwrap(),
        params["productKey"].as_str().unwrap(),
        params["timestamp"].as_str().unwrap().parse().unwrap(),
    );
    assert_eq!(params["sign"], sign::hmac_sha256_hex("secret-0", &text));
}

#[test]
fn a_bad_sign_gives_up_that_sub_device_alone() {
    let mut g = gateway(2);
    let sent = connect(&mut g, &[0, 1]);
    reply(
        &mut g,
        1,
        &format!("{SESSION}login_reply"),
        sent[0].1,
        6287,
        Value::Null,
    );
    reply(
        &mut g,
        1,
        &format!("{SESSION}login_reply"),
        sent[1].1,
        200,
        Value::Null,
    );
    let actions = drain(&mut g);
    let GatewayAction::SubdeviceGaveUp { index: 0, reason } = &actions[0] else {
        panic!("{actions:?}")
    };
    assert!(reason.contains("6287"), "{reason}");
    assert_eq!(actions[1], GatewayAction::SubdeviceOnline { index: 1 });
    // Nothing more is ever sent for it.
    g.handle_timeout(Instant::from_millis(3_600_000));
    assert!(requests(&drain(&mut g)).is_empty());
}

#[test]
fn a_refused_batch_is_asked_again_one_by_one_to_find_the_culprit() {
    let mut g = gateway(2);
    let sent = connect(&mut g, &[]);
    assert_eq!(names(&sent[0].2), ["node0", "node1"]);
    reply(
        &mut g,
        1,
        &format!("{GW}add_reply"),
        sent[0].1,
        401,
        Value::Null,
    );
    let singles = requests(&drain(&mut g));
    assert_eq!(singles.len(), 2);
    reply(
        &mut g,
        2,
        &format!("{GW}add_reply"),
        singles[0].1,
        401,
        Value::Null,
    );
    reply(
        &mut g,
        2,
        &format!("{GW}add_reply"),
        singles[1].1,
        200,
        Value::Null,
    );
    let actions = drain(&mut g);
    assert!(
        matches!(&actions[0], GatewayAction::SubdeviceGaveUp { index: 0, reason } if reason.contains("401"))
    );
    let login = requests(&actions);
    assert_eq!(names(&login[0].2), ["node1"]);
}

#[test]
fn too_many_logins_back_off_within_the_policy_then_retry() {
    let mut g = gateway(1);
    let sent = connect(&mut g, &[0]);
    reply(
        &mut g,
        1_000,
        &format!("{SESSION}login_reply"),
        sent[0].1,
        429,
        Value::Null,
    );
    assert!(drain(&mut g).is_empty());
    let at = g.poll_timeout().unwrap().as_millis();
    assert!((1_000 + 1_000..=1_000 + 2_000).contains(&at), "{at}");
    g.handle_timeout(Instant::from_millis(at - 1));
    assert!(drain(&mut g).is_empty());
    g.handle_timeout(Instant::from_millis(at));
    let again = requests(&drain(&mut g));
    assert_eq!(again[0].0, "login");
}

#[test]
fn a_cloud_that_never_answers_exhausts_the_budget_and_says_so() {
    let mut g = gateway(1);
    connect(&mut g, &[0]);
    let mut logins = 1;
    let mut gave_up = None;
    for _ in 0..100 {
        let Some(at) = g.poll_timeout() else { break };
        g.handle_timeout(at);
        for action in drain(&mut g) {
            match action {
                GatewayAction::Publish { .. } => logins += 1,
                GatewayAction::SubdeviceGaveUp { reason, .. } => gave_up = Some(reason),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(logins, 8);
    assert!(gave_up.unwrap().contains("no reply"));
    assert_eq!(g.poll_timeout(), None);
}

#[test]
fn a_520_kick_takes_the_sub_device_offline_and_logs_it_in_again() {
    let mut g = gateway(2);
    let sent = connect(&mut g, &[0, 1]);
    for (_, id, _) in &sent {
        reply(
            &mut g,
            1,
            &format!("{SESSION}login_reply"),
            *id,
            200,
            Value::Null,
        );
    }
    drain(&mut g);
    let notice =
        serde_json::json!({"code": 520, "message": "device no session", "data": device(1)});
    g.handle(
        Instant::from_millis(2),
        GatewayEvent::Message {
            topic: "/ext/error/a1GatewayPK/gw01",
            payload: notice.to_string().as_bytes(),
        },
    );
    let actions = drain(&mut g);
    assert_eq!(actions[0], GatewayAction::SubdeviceOffline { index: 1 });
    let login = requests(&actions);
    assert_eq!(names(&login[0].2), ["node1"]);
    assert_eq!(g.state(0), Some(&SubdeviceState::Online));
    reply(
        &mut g,
        3,
        &format!("{SESSION}login_reply"),
        login[0].1,
        200,
        Value::Null,
    );
    assert_eq!(drain(&mut g), [GatewayAction::SubdeviceOnline { index: 1 }]);
}

#[test]
fn deleted_or_disabled_sub_devices_are_given_up_with_the_reason() {
    let mut g = gateway(1);
    let sent = connect(&mut g, &[0]);
    log_in(&mut g, sent[0].1);
    let notice = serde_json::json!({"code": "522", "data": device(0)});
    g.handle(
        Instant::from_millis(2),
        GatewayEvent::Message {
            topic: "/ext/session/a1GatewayPK/gw01/combine/logout_reply",
            payload: notice.to_string().as_bytes(),
        },
    );
    let actions = drain(&mut g);
    assert_eq!(actions[0], GatewayAction::SubdeviceOffline { index: 0 });
    assert!(
        matches!(&actions[1], GatewayAction::SubdeviceGaveUp { reason, .. } if reason.contains("disabled"))
    );
}

#[test]
fn a_lost_connection_takes_every_sub_device_offline_and_a_new_one_starts_over() {
    let mut g = gateway(2);
    let sent = connect(&mut g, &[0, 1]);
    log_in(&mut g, sent[0].1);
    g.handle(Instant::from_millis(2), GatewayEvent::Disconnected);
    assert_eq!(
        drain(&mut g),
        [GatewayAction::SubdeviceOffline { index: 0 }]
    );
    // The late reply of the old connection is ignored; nothing is sent while down.
    reply(
        &mut g,
        3,
        &format!("{SESSION}login_reply"),
        sent[1].1,
        200,
        Value::Null,
    );
    g.handle_timeout(Instant::from_millis(1_000_000));
    assert!(drain(&mut g).is_empty());
    let again = connect(&mut g, &[0, 1]);
    assert_eq!(again.len(), 2);
}

#[test]
fn logout_ends_the_session_and_stops_the_agent() {
    let mut g = gateway(1);
    let sent = connect(&mut g, &[0]);
    log_in(&mut g, sent[0].1);
    g.logout(Instant::from_millis(5), 0);
    let actions = drain(&mut g);
    assert_eq!(actions[0], GatewayAction::SubdeviceOffline { index: 0 });
    let logout = requests(&actions);
    assert_eq!(logout[0].0, "logout");
    assert_eq!(g.state(0), Some(&SubdeviceState::LoggedOut));
}

#[test]
fn topics_are_routed_to_the_gateway_or_to_the_right_sub_device() {
    let g = gateway(2);
    assert!(g.handles("/ext/session/a1GatewayPK/gw01/combine/login_reply"));
    assert!(g.handles("/ext/error/a1GatewayPK/gw01"));
    assert!(!g.handles("/ext/session/a1GatewayPK/gw01/combine/login"));
    assert_eq!(
        g.subdevice_of_topic("/ota/device/upgrade/a1SubPK0001/node1"),
        Some(1)
    );
    assert_eq!(
        g.subdevice_of_topic("/sys/a1SubPK0001/node0/thing/ota/firmware/get_reply"),
        Some(0)
    );
    assert_eq!(
        g.subdevice_of_topic("/ota/device/upgrade/a1SubPK0001/node9"),
        None
    );
    assert_eq!(g.subdevice_of_topic("/ota/device/upgrade"), None);
    assert_eq!(g.subdevice_of_topic("/other"), None);
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let gw = DeviceIdentity::new("a1GatewayPK", "gw01").unwrap();
    let new = |subs: Vec<Subdevice>| {
        Gateway::new(GatewayConfig::new(gw.clone(), subs), Instant::ZERO).err()
    };
    assert!(new(vec![]).is_some());
    assert!(new(vec![sub(1), sub(1)]).is_some());
    let itself = Subdevice {
        identity: gw.clone(),
        secret: "s".into(),
    };
    assert!(new(vec![itself]).is_some());
    let mut config = GatewayConfig::new(gw.clone(), vec![sub(1)]);
    config.retry.max_attempts = 0;
    assert!(Gateway::new(config, Instant::ZERO).is_err());
}

#[derive(Clone, Debug)]
enum Op {
    Connect,
    Disconnect,
    /// Answer the `n`-th outstanding request with a code.
    Reply(usize, u32),
    /// A session notice for a sub-device.
    Notice(usize, u32, bool),
    /// Let time pass.
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let code = prop::sample::select(vec![
        200u32, 200, 200, 429, 500, 428, 401, 460, 6287, 6401, 521, 522, 6100, 777,
    ]);
    let notice = prop::sample::select(vec![520u32, 427, 521, 522, 6401, 6100]);
    prop_oneof![
        1 => Just(Op::Connect),
        1 => Just(Op::Disconnect),
        8 => (0..4usize, code).prop_map(|(n, c)| Op::Reply(n, c)),
        2 => (0..3usize, notice, any::<bool>()).prop_map(|(i, c, e)| Op::Notice(i, c, e)),
        3 => (0..400_000u64).prop_map(Op::Wait),
    ]
}

proptest! {
    /// The session machine against a model of what may happen when: a login only for a
    /// sub-device the cloud has in its topology, online only after a 200 login reply of the
    /// current connection, offline exactly once per online, nothing sent while disconnected or
    /// for a sub-device given up, and every back-off within the policy's bounds.
    #[test]
    fn the_session_keeps_its_order_and_bounds(ops in prop::collection::vec(op(), 1..80)) {
        let n = 3;
        let mut g = gateway(n);
        let policy = GatewayConfig::new(DeviceIdentity::new("a1GatewayPK", "gw01").unwrap(), vec![]).retry;
        let mut now = 0u64;
        let mut connected = false;
        let mut in_topology = [false; 3];
        let mut online = [false; 3];
        let mut gave_up = [false; 3];
        // Outstanding requests of this connection: (kind, id, devices).
        let mut outstanding: Vec<(String, u64, Vec<usize>, u64)> = Vec::new();
        // A 200 login reply was just given for this device: it must come online now.
        let mut expect_online: Option<usize> = None;
        // Devices whose last request failed retryably: not asked again before this instant.
        let mut not_before = [0u64; 3];

        for op in ops {
            match op {
                Op::Connect => {
                    if connected { continue; }
                    connected = true;
                    outstanding.clear();
                    not_before = [0; 3];
                    g.handle(Instant::from_millis(now), GatewayEvent::Connected);
                }
                Op::Disconnect => {
                    if !connected { continue; }
                    connected = false;
                    outstanding.clear();
                    g.handle(Instant::from_millis(now), GatewayEvent::Disconnected);
                }
                Op::Reply(k, code) => {
                    if outstanding.is_empty() { continue; }
                    let (kind, id, devices, _) = outstanding.remove(k % outstanding.len());
                    let topic = match kind.as_str() {
                        "get" => format!("{GW}get_reply"),
                        "add" => format!("{GW}add_reply"),
                        _ => format!("{SESSION}login_reply"),
                    };
                    let data = if kind == "get" {
                        Value::Array(devices.iter().map(|&i| device(i)).collect())
                    } else {
                        Value::Null
                    };
                    if code == 200 && kind == "add" {
                        for &i in &devices { in_topology[i] = true; }
                    }
                    if code == 200 && kind == "get" {
                        for &i in &devices { in_topology[i] = true; }
                    }
                    if code == 200 && kind == "login" {
                        expect_online = Some(devices[0]);
                    }
                    if matches!(code, 429 | 428 | 500) && kind != "get" {
                        for &i in &devices { not_before[i] = now + policy.base_delay.as_millis() as u64 / 2; }
                    }
                    if code == 6401 && kind == "login" { in_topology[devices[0]] = false; }
                    reply(&mut g, now, &topic, id, code, data);
                }
                Op::Notice(i, code, on_error_topic) => {
                    let topic = if on_error_topic {
                        "/ext/error/a1GatewayPK/gw01".to_string()
                    } else {
                        format!("{SESSION}logout_reply")
                    };
                    if code == 6401 && connected && !gave_up[i] { in_topology[i] = false; }
                    let payload = serde_json::json!({"code": code, "data": device(i)}).to_string();
                    g.handle(Instant::from_millis(now), GatewayEvent::Message { topic: &topic, payload: payload.as_bytes() });
                }
                Op::Wait(ms) => {
                    now += ms;
                    g.handle_timeout(Instant::from_millis(now));
                    // Requests without a reply for the reply timeout are dead.
                    outstanding.retain(|r| r.3 + 10_000 > now);
                }
            }
            let mut came_online = None;
            for action in drain(&mut g) {
                match action {
                    GatewayAction::Subscribe { .. } => prop_assert!(connected),
                    GatewayAction::Publish { topic, payload } => {
                        prop_assert!(connected, "published while disconnected");
                        let json: Value = serde_json::from_slice(&payload).unwrap();
                        let id: u64 = json["id"].as_str().unwrap().parse().unwrap();
                        let kind = topic.rsplit('/').next().unwrap().to_string();
                        let devices: Vec<usize> = if kind == "get" {
                            vec![0, 2] // the cloud knows node0 and node2; node1 must be added
                        } else {
                            names(&json).iter().map(|s| s[4..].parse().unwrap()).collect()
                        };
                        for &i in &devices {
                            if kind == "get" { continue; }
                            prop_assert!(!gave_up[i], "request for given-up node{}", i);
                            prop_assert!(now >= not_before[i], "node{} asked again before its back-off", i);
                            if kind == "login" {
                                prop_assert!(in_topology[i], "login of node{} before its topology", i);
                            }
                        }
                        if kind != "logout" {
                            outstanding.push((kind, id, devices, now));
                        }
                    }
                    GatewayAction::SubdeviceOnline { index } => {
                        prop_assert_eq!(expect_online, Some(index));
                        prop_assert!(!online[index]);
                        online[index] = true;
                        came_online = Some(index);
                    }
                    GatewayAction::SubdeviceOffline { index } => {
                        prop_assert!(online[index], "offline without online");
                        online[index] = false;
                    }
                    GatewayAction::SubdeviceGaveUp { index, reason } => {
                        prop_assert!(!reason.is_empty());
                        prop_assert!(!online[index]);
                        gave_up[index] = true;
                    }
                }
            }
            if let Some(i) = expect_online.take() {
                prop_assert!(came_online == Some(i) || gave_up[i] || !connected,
                    "a 200 login reply for node{} did not bring it online", i);
            }
            if !connected {
                prop_assert!(online.iter().all(|o| !o), "online while the gateway is disconnected");
            }
            if let Some(at) = g.poll_timeout() {
                prop_assert!(at.as_millis() <= now + policy.max_delay.as_millis() as u64 + 10_000);
            }
        }
    }
}
