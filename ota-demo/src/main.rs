//! `ota-demo`: run the whole story, ota-std devices against ota-sim, in one command.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// The whole story on one machine: a simulator (ota-sim), N in-process devices running the
/// Linux agent (ota-std), a verified package, a batch job, reboots into the new version, a
/// final table.
#[derive(Parser)]
#[command(name = "ota-demo", version)]
struct DemoArgs {
    /// How many devices.
    #[arg(long, value_name = "N", default_value_t = 8)]
    devices: usize,
    /// Mix in expired URLs, cut connections, ignored Range and one corrupt download.
    #[arg(long)]
    faults: bool,
    /// Image size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    size: usize,
    /// Download rate per device in bytes per second (0: unlimited).
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    rate: u64,
    /// Sign the package (secure upgrade); the second device is sent a wrong signature once.
    #[arg(long)]
    signed: bool,
    /// Instead: one gateway (ota-std's gateway mode) updating its sub-devices at once.
    #[arg(long, conflicts_with_all = ["devices", "faults", "signed"])]
    gateway: bool,
    /// With --gateway: how many sub-devices.
    #[arg(long, value_name = "N", default_value_t = 6, requires = "gateway")]
    subdevices: usize,
    /// With --gateway: most sub-devices downloading at once.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "gateway")]
    max_parallel: usize,
    /// Devices connect over MQTT-TLS and download over HTTPS, trusting only the simulator's
    /// generated RSA root (the chain `serve --tls` presents).
    #[arg(long)]
    tls: bool,
}

/// A failure worth one line on stderr, with its exit code.
struct Failure(u8, String);

fn main() -> ExitCode {
    let args = match DemoArgs::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message is the first paragraph; the rest is usage.
            let text = e.render().to_string();
            let para: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
            let message = para.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
            eprintln!(
                "ota-demo: {} (try --help)",
                message.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match demo(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("ota-demo: {message}");
            ExitCode::from(code)
        }
    }
}

fn demo(args: DemoArgs) -> Result<(), Failure> {
    if args.gateway {
        return demo_gateway(&args);
    }
    if args.devices == 0 || args.size == 0 {
        return Err(Failure(2, "--devices and --size must be at least 1".into()));
    }
    let options = ota_demo::devices::DemoOptions {
        devices: args.devices,
        faults: args.faults,
        size: args.size,
        rate: args.rate,
        signed: args.signed,
        tls: args.tls,
        ..ota_demo::devices::DemoOptions::default()
    };
    let rows = ota_demo::devices::run(&options).map_err(|e| Failure(1, e))?;
    print!("{}", ota_demo::devices::table(&rows));
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(Failure(
            1,
            format!("{failed} device(s) did not reach the target version"),
        ));
    }
    Ok(())
}

fn demo_gateway(args: &DemoArgs) -> Result<(), Failure> {
    if args.subdevices == 0 || args.max_parallel == 0 || args.size == 0 {
        return Err(Failure(
            2,
            "--subdevices, --max-parallel and --size must be at least 1".into(),
        ));
    }
    let options = ota_demo::gateway::GatewayDemoOptions {
        subdevices: args.subdevices,
        max_parallel: args.max_parallel,
        size: args.size,
        rate: args.rate,
        ..Default::default()
    };
    let report = ota_demo::gateway::run(&options).map_err(|e| Failure(1, e))?;
    print!("{}", ota_demo::gateway::table(&report));
    let failed = report.rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(Failure(
            1,
            format!("{failed} sub-device(s) did not reach the target version"),
        ));
    }
    Ok(())
}
