#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ota_core::testkit::fuzz::mqtt_frame(data));
