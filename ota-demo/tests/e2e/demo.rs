//! The `ota-demo` logic, with fewer devices and a smaller image.

use std::time::Duration;

use ota_demo::devices::{run, table, DemoOptions};

fn options(devices: usize, faults: bool) -> DemoOptions {
    DemoOptions {
        devices,
        faults,
        size: 512 * 1024,
        rate: 0,
        timeout: Duration::from_secs(60),
        ..DemoOptions::default()
    }
}

#[test]
fn demo_upgrades_every_device() {
    let rows = run(&options(3, false)).unwrap();
    println!("{}", table(&rows));
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(row.ok, "{row:?}");
        assert_eq!((row.from.as_str(), row.to.as_str()), ("1.0.0", "2.0.0"));
        assert!(row.failures.is_empty(), "{row:?}");
        assert_eq!(row.bytes, 512 * 1024, "{row:?}");
    }
}

#[test]
fn demo_with_faults_upgrades_every_device() {
    let rows = run(&options(5, true)).unwrap();
    println!("{}", table(&rows));
    let kinds: Vec<_> = rows.iter().map(|r| r.fault.map(|(kind, _)| kind)).collect();
    assert_eq!(
        kinds,
        [
            None,
            Some("expired URL"),
            Some("cut"),
            Some("ignored Range"),
            Some("corrupt byte")
        ]
    );
    for row in &rows {
        assert!(row.ok, "{row:?}");
        assert!(row.fault.is_none_or(|(_, fired)| fired), "{row:?}");
    }
    assert_eq!(
        rows[4].failures,
        [-3],
        "the corrupt download fails once with -3"
    );
    assert!(rows[1..4].iter().all(|r| r.failures.is_empty()));
}

#[test]
fn signed_demo_shows_a_device_refusing_a_badly_signed_package() {
    let rows = run(&DemoOptions {
        signed: true,
        ..options(3, false)
    })
    .unwrap();
    println!("{}", table(&rows));
    assert_eq!(
        rows[1].fault,
        Some(("wrong signature", true)),
        "{:?}",
        rows[1]
    );
    assert_eq!(
        rows[1].failures,
        [-3],
        "refused once, then the good signature"
    );
    for row in &rows {
        assert!(row.ok, "{row:?}");
    }
    assert!(rows[0].failures.is_empty() && rows[2].failures.is_empty());
}
