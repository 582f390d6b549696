//! `ota-sim`: run the simulated OTA cloud from the command line.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand, ValueEnum};
use ota_sim::{
    BrokerConfig, DeviceInfo, DownloadProtocol, FaultSpec, JobSpec, PackageSigner, PackageSpec,
    SignMethod, Sim, SimConfig, SimTls, TlsKey, TlsOptions, TlsVersions,
};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A local Alibaba-Cloud-IoT-like OTA cloud for testing device OTA clients.
#[derive(Parser)]
#[command(name = "ota-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one package to simulated devices until interrupted. A flag given twice takes
    /// its last value.
    #[command(
        after_help = format!("{}\n{}", ota_sim::FAULT_GRAMMAR, ota_sim::GATEWAY_FAULT_GRAMMAR),
        args_override_self = true
    )]
    Serve(Box<ServeArgs>),
    /// Drive a running `serve` with its devices at once, as light raw-MQTT devices in this
    /// process (one session and one HTTP Range fetch each); print time, throughput and the
    /// simulator's memory.
    Load(LoadArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// The info file of the running `ota-sim serve` (its devices are used).
    #[arg(long, value_name = "PATH")]
    info_file: PathBuf,
    /// Drive only the first N devices of the info file.
    #[arg(long, value_name = "N")]
    devices: Option<usize>,
    /// Connections opened at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    connect_concurrency: usize,
    /// Downloads at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    fetch_concurrency: usize,
    /// Seconds a device waits for its push.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    push_timeout: u64,
    /// Keep at most N sessions open at once (a device done closes its session); default:
    /// all devices' sessions open together until the last one is done.
    #[arg(long, value_name = "N")]
    at_once: Option<usize>,
}

fn load(args: LoadArgs) -> Result<(), Failure> {
    let options = ota_sim::load::LoadOptions {
        info_file: args.info_file,
        devices: args.devices,
        connect_concurrency: args.connect_concurrency,
        fetch_concurrency: args.fetch_concurrency,
        push_timeout: Duration::from_secs(args.push_timeout),
        at_once: args.at_once,
    };
    let report = ota_sim::load::run(&options).map_err(|e| Failure(1, e))?;
    print!("{}", report.summary());
    if report.succeeded < report.devices {
        let failed = report.devices - report.succeeded;
        return Err(Failure(1, format!("{failed} device(s) did not finish")));
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum SignMethodArg {
    Md5,
    Sha256,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Http,
    Mqtt,
}

#[derive(Clone, Copy, ValueEnum)]
enum TlsKeyArg {
    Rsa,
    Ecdsa,
}

#[derive(Clone, Copy, ValueEnum)]
enum TlsVersionsArg {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
    Both,
}

#[derive(Args)]
struct ServeArgs {
    /// The firmware image to serve; repeat it for a multi-file package (up to 20 files, named
    /// after their file names).
    #[arg(long, value_name = "FILE", required = true)]
    firmware: Vec<PathBuf>,
    /// Its version; devices reporting another version get it.
    #[arg(long, value_name = "V")]
    version: String,
    /// Module of the package.
    #[arg(long, value_name = "M", default_value = ota_sim::DEFAULT_MODULE)]
    module: String,
    /// Digest announced in pushes.
    #[arg(long, value_enum, default_value = "md5")]
    sign_method: SignMethodArg,
    /// How devices fetch the package: signed HTTP URLs or blocks over MQTT.
    #[arg(long, value_enum, default_value = "http")]
    download_protocol: ProtocolArg,
    /// How many devices to create.
    #[arg(long, value_name = "N", default_value_t = 1)]
    devices: u32,
    /// MQTT port of the embedded broker (0 picks a free one).
    #[arg(long, value_name = "P", default_value_t = 1883)]
    mqtt_port: u16,
    /// Use this broker instead of the embedded one: mqtt://[user:pass@]host[:port].
    #[arg(long, value_name = "URL", conflicts_with = "mqtt_port")]
    broker_url: Option<String>,
    /// Firmware server port (0 picks a free one).
    #[arg(long, value_name = "P", default_value_t = 8080)]
    http_port: u16,
    /// Announce firmware URLs under this base instead of the listener's address, e.g.
    /// http://fw.example.test for a device that ignores URL ports, behind a port forward from
    /// 80 (or serve on port 80 itself: --http-port 80). A default port is never written out.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// The same for https URLs (with --tls), e.g. https://fw.example.test.
    #[arg(long, value_name = "URL", requires = "tls")]
    public_https_url: Option<String>,
    /// How long download URLs stay valid, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    url_ttl: u64,
    /// Write the endpoints and device credentials here as JSON (default: stdout).
    #[arg(long, value_name = "PATH")]
    info_file: Option<PathBuf>,
    /// Sign the package with this RSA-2048 private key (PEM): pushes carry `digestsign`. Its
    /// public key is written beside the info file (INFO with extension `signing-key.pem`).
    #[arg(long, value_name = "FILE", conflicts_with = "sign")]
    sign_key: Option<PathBuf>,
    /// Sign the package with a fresh RSA-2048 key; its public key is written beside the
    /// info file, for the devices' --signing-key.
    #[arg(long, requires = "info_file")]
    sign: bool,
    /// Also listen for MQTT over TLS and HTTPS, with a chain made at start as the platform's
    /// is shaped: an RSA-2048 root, an intermediate and a leaf for 127.0.0.1, localhost and
    /// --tls-name; TLS 1.3 and 1.2 with ECDHE-RSA and static-RSA key exchange, AES-GCM and
    /// AES-CBC. The root is written to ota-sim-ca.pem beside the info file (or in the current
    /// directory) and named in the info file as ca_pem_path. Devices that log in over TLS get
    /// https URLs, others http.
    #[arg(long)]
    tls: bool,
    /// Key type of the generated chain: rsa (root, intermediate, leaf) or ecdsa (P-256 root
    /// and leaf, for TLS 1.3 clients without RSA).
    #[arg(long, value_enum, default_value = "rsa", requires = "tls")]
    tls_key: TlsKeyArg,
    /// Extra host name or IP address of the generated leaf certificate (repeatable).
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    tls_names: Vec<String>,
    /// TLS versions accepted.
    #[arg(long, value_enum, default_value = "both", requires = "tls")]
    tls_versions: TlsVersionsArg,
    /// OpenSSL cipher list for TLS 1.2 instead of the default (e.g. AES128-SHA:AES128-SHA256
    /// for legacy suites only); TLS 1.3 names in it (TLS_AES_128_GCM_SHA256) pick the TLS 1.3
    /// suites.
    #[arg(long, value_name = "LIST", requires = "tls")]
    tls_ciphers: Option<String>,
    /// MQTT-over-TLS port (0 picks a free one).
    #[arg(long, value_name = "P", default_value_t = 8883, requires = "tls")]
    mqtts_port: u16,
    /// HTTPS firmware server port (0 picks a free one).
    #[arg(long, value_name = "P", default_value_t = 8443, requires = "tls")]
    https_port: u16,
    /// Serve this PEM certificate chain instead of a generated one (with --key).
    #[arg(long, value_name = "PEM", requires_all = ["tls", "key"])]
    cert: Option<PathBuf>,
    /// Inject a fault, e.g. dev0002:cut:100000 (repeatable; grammar below). /status reports
    /// each one: whether and when it fired.
    #[arg(long = "fault", value_name = "SPEC")]
    faults: Vec<FaultArg>,
    /// How many gateways to create (gw0001, ...), each with its own sub-devices.
    #[arg(long, value_name = "G", default_value_t = 0)]
    gateways: u32,
    /// Sub-devices per gateway ({gateway}-node01, ...), listed in the info file with their
    /// secrets; the gateway must add them to its topology and log them in (protocol §14).
    #[arg(long, value_name = "S", default_value_t = 0, requires = "gateways")]
    subdevices_per_gateway: u32,
    /// Put every sub-device into its gateway's topology from the start, as if added in the
    /// console (topo/get lists them; the gateway logs them in without topo/add).
    #[arg(long, requires = "gateways")]
    preset_topology: bool,
    /// The PEM private key of --cert.
    #[arg(long, value_name = "PEM", requires_all = ["tls", "cert"])]
    key: Option<PathBuf>,
}

/// A `--fault`: of the firmware server and block replies, or of sub-device sessions.
#[derive(Clone)]
enum FaultArg {
    Device(FaultSpec),
    Gateway(ota_sim::GatewayFaultSpec),
}

impl std::str::FromStr for FaultArg {
    type Err = String;

    fn from_str(text: &str) -> Result<FaultArg, String> {
        // Gateway faults are named login-CODE, topo-CODE, kick-CODE; no other fault is.
        let names = ["login-", "topo-", "kick-"];
        let gateway_fault = text
            .split(':')
            .any(|part| names.iter().any(|n| part.starts_with(n)));
        match gateway_fault {
            true => text.parse().map(FaultArg::Gateway),
            false => text.parse().map(FaultArg::Device),
        }
    }
}

/// A gateway and its sub-devices, in the info file.
#[derive(Serialize)]
struct GatewayInfo {
    #[serde(flatten)]
    gateway: DeviceInfo,
    subdevices: Vec<DeviceInfo>,
}

/// What a device or a test harness needs to talk to this simulator.
#[derive(Serialize)]
struct Info<'a> {
    /// The simulator's process id (its memory can be read in /proc).
    pid: u32,
    mqtt_host: &'a str,
    mqtt_port: u16,
    http_base_url: &'a str,
    /// Where the firmware server listens (the URLs may name another host, --public-url).
    http_listen: std::net::SocketAddr,
    version: &'a str,
    module: &'a str,
    download_protocol: DownloadProtocol,
    files: Vec<String>,
    devices: &'a [DeviceInfo],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gateways: Vec<GatewayInfo>,
    /// The package-signing public key (PEM) written for the devices, when signing.
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_key_file: Option<PathBuf>,
    /// With --tls: the MQTT-over-TLS port, the HTTPS base URL and the PEM devices trust.
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtts_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    https_base_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_pem_path: Option<PathBuf>,
    /// With --tls: what the listeners present and offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsInfo>,
}

/// The TLS choices, as the info file names them.
#[derive(Serialize)]
struct TlsInfo {
    /// `rsa` or `ecdsa` for a generated chain, `files` for --cert/--key.
    key: &'static str,
    names: Vec<String>,
    versions: TlsVersions,
    ciphers: String,
}

/// A failure worth one line on stderr, with its exit code.
struct Failure(u8, String);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let message = match e.kind() {
                clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    "missing subcommand (serve, load)".to_owned()
                }
                _ => {
                    // clap's message is the first paragraph; the rest is usage.
                    let text = e.render().to_string();
                    let para: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
                    para.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
                }
            };
            eprintln!(
                "ota-sim: {} (try --help)",
                message.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Load(args) => load(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("ota-sim: {message}");
            ExitCode::from(code)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ota_sim=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// Writes the generated CA beside the info file (or in the current directory); returns its
/// absolute path.
fn write_ca(info_file: &Option<PathBuf>, pem: &str) -> Result<PathBuf, Failure> {
    let dir = info_file
        .as_ref()
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let path = dir.join("ota-sim-ca.pem");
    std::fs::write(&path, pem)
        .map_err(|e| Failure(1, format!("cannot write {}: {e}", path.display())))?;
    Ok(std::path::absolute(&path).unwrap_or(path))
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let usage = |m: String| Failure(2, m);
    let mut files = Vec::with_capacity(args.firmware.len());
    for path in &args.firmware {
        let data = std::fs::read(path)
            .map_err(|e| usage(format!("cannot read firmware {}: {e}", path.display())))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        files.push((name.unwrap_or_default(), data));
    }
    let sign_method = match args.sign_method {
        SignMethodArg::Md5 => SignMethod::Md5,
        SignMethodArg::Sha256 => SignMethod::Sha256,
    };
    let protocol = match args.download_protocol {
        ProtocolArg::Http => DownloadProtocol::Http,
        ProtocolArg::Mqtt => DownloadProtocol::Mqtt,
    };
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let spec = match <[_; 1]>::try_from(files) {
        Ok([(_, data)]) => PackageSpec::new(args.version.clone(), data),
        Err(files) => PackageSpec::files(args.version.clone(), files),
    };
    let spec = spec
        .module(args.module.clone())
        .sign_method(sign_method)
        .download_protocol(protocol);
    let signer = match (&args.sign_key, args.sign) {
        (Some(path), _) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            Some(PackageSigner::from_pem(&pem).map_err(|e| usage(e.to_string()))?)
        }
        (None, true) => Some(PackageSigner::generate().map_err(|e| Failure(1, e.to_string()))?),
        (None, false) => None,
    };
    if signer.is_some() && spec.is_multi_file() {
        return Err(usage(
            "a multi-file package cannot be signed: pushes carry no per-file signature".into(),
        ));
    }
    let spec = match &signer {
        Some(signer) => signer.sign(spec),
        None => spec,
    };
    spec.validate()
        .map_err(|e| usage(format!("bad package: {e}")))?;
    let device_names: Vec<String> = (1..=args.devices).map(|i| format!("dev{i:04}")).collect();
    if args.gateways > 999 || args.subdevices_per_gateway > 99 {
        return Err(usage(
            "--gateways is at most 999 and --subdevices-per-gateway at most 99".into(),
        ));
    }
    let sub_names: Vec<String> = (1..=args.gateways)
        .flat_map(|g| {
            (1..=args.subdevices_per_gateway).map(move |s| format!("gw{g:04}-node{s:02}"))
        })
        .collect();
    for spec in args.faults.iter().filter_map(|f| match f {
        FaultArg::Gateway(spec) => Some(spec),
        FaultArg::Device(_) => None,
    }) {
        if let Some(d) = spec.device.as_ref().filter(|d| !sub_names.contains(d)) {
            return Err(usage(format!(
                "--fault names sub-device {d}; there are {}",
                match sub_names.first() {
                    Some(first) => format!("{first}..{}", sub_names[sub_names.len() - 1]),
                    None => "none (use --gateways and --subdevices-per-gateway)".into(),
                }
            )));
        }
    }
    for spec in args.faults.iter().filter_map(|f| match f {
        FaultArg::Device(spec) => Some(spec),
        FaultArg::Gateway(_) => None,
    }) {
        let known_name = |d: &String| device_names.contains(d) || sub_names.contains(d);
        if let Some(d) = spec.device.as_ref().filter(|d| !known_name(d)) {
            let known = format!("dev0001..dev{:04}", args.devices);
            return Err(usage(format!(
                "--fault names device {d}; there are {known}"
            )));
        }
    }
    init_logging();
    // Three descriptors per device session (see ota_sim::raise_open_files), and some spare.
    ota_sim::raise_open_files(u64::from(args.devices) * 3 + 1024);
    let broker = match &args.broker_url {
        Some(url) => BrokerConfig::External { url: url.clone() },
        None => BrokerConfig::Embedded {
            port: args.mqtt_port,
        },
    };
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(SimTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => args.tls.then_some(SimTls::Generated),
    };
    let tls_options = TlsOptions {
        key: match args.tls_key {
            TlsKeyArg::Rsa => TlsKey::Rsa,
            TlsKeyArg::Ecdsa => TlsKey::Ecdsa,
        },
        names: args.tls_names.clone(),
        versions: match args.tls_versions {
            TlsVersionsArg::V12 => TlsVersions::Tls12,
            TlsVersionsArg::V13 => TlsVersions::Tls13,
            TlsVersionsArg::Both => TlsVersions::Both,
        },
        ciphers: args.tls_ciphers.clone(),
    };
    let tls_info = tls.as_ref().map(|tls| TlsInfo {
        key: match (tls, tls_options.key) {
            (SimTls::Files { .. }, _) => "files",
            (_, TlsKey::Rsa) => "rsa",
            (_, TlsKey::Ecdsa) => "ecdsa",
        },
        names: tls_options.names.clone(),
        versions: tls_options.versions,
        ciphers: tls_options
            .ciphers
            .clone()
            .unwrap_or_else(|| ota_sim::DEFAULT_CIPHERS.to_owned()),
    });
    let config = SimConfig {
        broker,
        http_port: args.http_port,
        public_url: args.public_url.clone(),
        public_https_url: args.public_https_url.clone(),
        url_ttl: Duration::from_secs(args.url_ttl),
        mqtts_port: args.mqtts_port,
        https_port: args.https_port,
        tls,
        tls_options,
        ..SimConfig::default()
    };
    let sim = Sim::start(config).map_err(|e| Failure(1, format!("cannot start: {e}")))?;
    let ca_pem_path = match (&args.cert, sim.ca_pem()) {
        (Some(cert), _) => Some(std::path::absolute(cert).unwrap_or(cert.clone())),
        (None, Some(pem)) => Some(write_ca(&args.info_file, &pem)?),
        (None, None) => None,
    };
    let states = sim.watch_states();
    let devices = (0..args.devices)
        .map(|_| sim.add_device())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure(1, e.to_string()))?;
    let mut gateways = Vec::new();
    for _ in 0..args.gateways {
        let gateway = sim.add_gateway().map_err(|e| Failure(1, e.to_string()))?;
        let subdevices = (0..args.subdevices_per_gateway)
            .map(|_| sim.add_subdevice(&gateway))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure(1, e.to_string()))?;
        if args.preset_topology {
            for sub in &subdevices {
                sim.add_to_topology(&gateway, sub);
            }
        }
        gateways.push(GatewayInfo {
            gateway,
            subdevices,
        });
    }
    for fault in &args.faults {
        let spec = match fault {
            FaultArg::Device(spec) => spec,
            FaultArg::Gateway(spec) => {
                let device = spec
                    .device
                    .as_ref()
                    .map(|d| ota_sim::DeviceId::new(ota_sim::SUBDEVICE_PRODUCT_KEY, d.clone()));
                sim.set_gateway_fault(device.as_ref(), spec.fault, spec.times);
                continue;
            }
        };
        let subdevices = gateways.iter().flat_map(|g| &g.subdevices);
        let targets = devices
            .iter()
            .chain(subdevices)
            .filter(|d| spec.device.as_ref().is_none_or(|n| *n == d.id.device_name));
        for device in targets {
            for fault in &spec.faults {
                sim.set_fault(device, *fault, spec.times);
            }
        }
    }
    let package = sim
        .add_package(spec)
        .map_err(|e| Failure(1, e.to_string()))?;
    sim.create_job(JobSpec::batch(package).dynamic())
        .map_err(|e| Failure(1, e.to_string()))?;
    let signing_key_file = match (&signer, &args.info_file) {
        (Some(signer), Some(info)) => {
            let path = info.with_extension("signing-key.pem");
            std::fs::write(&path, signer.public_key_pem())
                .map_err(|e| Failure(1, format!("cannot write {}: {e}", path.display())))?;
            Some(path)
        }
        _ => None,
    };
    let info = Info {
        pid: std::process::id(),
        mqtt_host: sim.mqtt_host(),
        mqtt_port: sim.mqtt_port(),
        http_base_url: sim.http_base_url(),
        http_listen: sim.http_listen_addr(),
        version: &args.version,
        module: &args.module,
        download_protocol: protocol,
        files: names,
        devices: &devices,
        gateways,
        signing_key_file,
        mqtts_port: sim.mqtts_port(),
        https_base_url: sim.https_base_url(),
        ca_pem_path,
        tls: tls_info,
    };
    let json = serde_json::to_string_pretty(&info).map_err(|e| Failure(1, e.to_string()))?;
    match &args.info_file {
        Some(path) => std::fs::write(path, json + "\n")
            .map_err(|e| Failure(1, format!("cannot write {}: {e}", path.display())))?,
        None => println!("{json}"),
    }
    // The live view, on stdout after the info (when that goes to stdout too).
    std::thread::spawn(move || {
        for change in states {
            println!("{change}");
        }
    });
    tracing::info!(
        "ready: mqtt {}:{}, firmware {}, {} device(s), {} gateway(s) with {} sub-device(s) each",
        sim.mqtt_host(),
        sim.mqtt_port(),
        sim.http_base_url(),
        devices.len(),
        args.gateways,
        args.subdevices_per_gateway
    );
    loop {
        std::thread::park();
    }
}
