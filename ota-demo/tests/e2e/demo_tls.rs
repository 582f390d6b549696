//! `ota-demo --tls`: the demo's devices (ota-std) over MQTT-TLS and HTTPS, trusting only
//! the generated RSA root, refusing plain http.

use ota_demo::devices::{run, table, DemoOptions};
use std::time::Duration;

#[test]
fn the_demo_runs_over_tls_against_the_rsa_chain() {
    let rows = run(&DemoOptions {
        devices: 3,
        size: 256 * 1024,
        rate: 0,
        timeout: Duration::from_secs(60),
        tls: true,
        ..DemoOptions::default()
    })
    .unwrap();
    println!("{}", table(&rows));
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(row.ok, "{row:?}");
        assert_eq!(row.bytes, 256 * 1024, "{row:?}");
    }
}
