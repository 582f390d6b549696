fn main() {
    eprintln!("ota-sim: not built yet");
    std::process::exit(2);
}
