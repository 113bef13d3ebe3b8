//! The deployment files parse and say what the docs promise: both compose
//! files, the Swarm stack and the Kubernetes manifests. This catches the
//! mistakes a YAML edit makes silently (an indentation slip that drops a
//! health check, a misspelt variable the binaries never read, a headless
//! Service that is not headless) without needing Docker or a cluster; the
//! compose files are also brought up for real by tests/compose/run.sh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a YAML file, with `<<` merge keys applied (yaml-rust2
/// expands aliases but, like YAML 1.2, knows no merge keys; Compose uses them).
fn load(rel: &str) -> Vec<Yaml> {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert!(!docs.is_empty(), "{rel}: no YAML document");
    docs.into_iter().map(merge_keys).collect()
}

fn merge_keys(y: Yaml) -> Yaml {
    match y {
        Yaml::Array(a) => Yaml::Array(a.into_iter().map(merge_keys).collect()),
        Yaml::Hash(h) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            let mut merged = Vec::new();
            for (k, v) in h {
                if k.as_str() == Some("<<") {
                    match merge_keys(v) {
                        Yaml::Array(list) => merged.extend(list),
                        other => merged.push(other),
                    }
                } else {
                    out.insert(k, merge_keys(v));
                }
            }
            // Explicit keys win over merged ones; earlier merges over later.
            for src in merged {
                let Yaml::Hash(src) = src else {
                    panic!("`<<` must merge a mapping")
                };
                for (k, v) in src {
                    out.entry(k).or_insert(v);
                }
            }
            Yaml::Hash(out)
        }
        other => other,
    }
}

fn s(y: &Yaml) -> &str {
    y.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {y:?}"))
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("expected a list, got {y:?}"))
        .iter()
        .map(|v| s(v).to_owned())
        .collect()
}

/// A compose `environment:` mapping (or `KEY=value` list) as name -> value.
fn compose_env(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Null => String::new(),
                    v => s(v).to_owned(),
                };
                (s(k).to_owned(), v)
            })
            .collect(),
        Yaml::Array(_) => strings(&service["environment"])
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        other => panic!("environment must be a mapping or list: {other:?}"),
    }
}

/// Every string literal in src/: a variable the binaries never mention is a
/// typo in a manifest (it would be silently ignored at run time).
fn known_variable(name: &str) -> bool {
    // Read by tracing-subscriber's EnvFilter / only used for $(…) expansion.
    const EXTERNAL: &[&str] = &["RUST_LOG", "POD_NAMESPACE"];
    if EXTERNAL.contains(&name) {
        return true;
    }
    let needle = format!("\"{name}\"");
    walk(&root().join("src")).iter().any(|p| {
        std::fs::read_to_string(p)
            .map(|t| t.contains(&needle))
            .unwrap_or(false)
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src/").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The probe must run the same binary the container runs (scratch image, no
/// shell): `[CMD, /api, healthcheck]` for `command: [/api]`.
fn assert_compose_service(file: &str, name: &str, svc: &Yaml) {
    let cmd = strings(&svc["command"]);
    let probe = strings(&svc["healthcheck"]["test"]);
    assert_eq!(
        probe,
        ["CMD", cmd[0].as_str(), "healthcheck"],
        "{file}: {name} probe"
    );
    assert!(
        !svc["restart"].is_badvalue(),
        "{file}: {name} has no restart"
    );
    assert_eq!(s(&svc["stop_grace_period"]), "10s", "{file}: {name}");
    let env = compose_env(svc);
    for var in env.keys() {
        assert!(known_variable(var), "{file}: {name} sets unknown {var}");
    }
    let grace: u64 = env["SHUTDOWN_GRACE_SECS"]
        .rsplit(['-', ':'])
        .next()
        .and_then(|v| v.trim_end_matches('}').parse().ok())
        .expect("SHUTDOWN_GRACE_SECS default");
    assert!(grace < 10, "{file}: {name} drains longer than Docker waits");
    assert!(
        strings(&svc["extra_hosts"]).contains(&"host.docker.internal:host-gateway".to_owned()),
        "{file}: {name} cannot reach the host's MySQL"
    );
}

#[test]
fn scale_file_discovers_replicas_through_docker_dns() {
    let file = "docker-compose.scale.yml";
    let doc = &load(file)[0];
    assert_eq!(s(&doc["version"]), "2.4");
    let services = doc["services"].as_hash().expect("services");
    assert_eq!(services.len(), 2, "{file}: balancer and api only");
    for (name, svc) in services {
        assert_compose_service(file, s(name), svc);
    }
    let lb = &doc["services"]["balancer"];
    let env = compose_env(lb);
    assert_eq!(env["BACKEND_DNS"], "api");
    assert_eq!(env["BACKEND_PORT"], "13004");
    assert!(env["DNS_REFRESH_SECS"].contains("DNS_REFRESH_SECS:-60"));
    assert!(strings(&lb["ports"])[0].ends_with(":13003"));
    let api = &doc["services"]["api"];
    // Both would make `--scale api=N` fail.
    assert!(api["container_name"].is_badvalue());
    assert!(api["ports"].is_badvalue());
    assert!(compose_env(api)["MYSQL_HOST"].contains("host.docker.internal"));
}

#[test]
fn cluster_file_lists_five_named_instances() {
    let file = "docker-compose.cluster.yml";
    let doc = &load(file)[0];
    assert_eq!(s(&doc["version"]), "2.4");
    let services = doc["services"].as_hash().expect("services");
    for (name, svc) in services {
        assert_compose_service(file, s(name), svc);
    }
    let lb = compose_env(&doc["services"]["balancer"]);
    let listed: Vec<&str> = lb["BACKEND_HOSTS"].split(',').collect();
    assert_eq!(listed.len(), 5);
    for (i, hostport) in listed.iter().enumerate() {
        let want = format!("api-{}", i + 1);
        assert_eq!(*hostport, format!("{want}:13004"));
        let svc = &doc["services"][want.as_str()];
        assert!(!svc.is_badvalue(), "{file}: no service {want}");
        assert_eq!(compose_env(svc)["INSTANCE_ID"], want);
    }
}

#[test]
fn swarm_stack_resolves_tasks_and_keeps_client_addresses() {
    let file = "deploy/swarm/stack.yml";
    let doc = &load(file)[0];
    let lb = &doc["services"]["balancer"];
    let api = &doc["services"]["api"];
    assert!(!api.is_badvalue(), "{file}: no api service");
    // The bare name is a virtual IP in Swarm; tasks.<name> lists the tasks.
    assert_eq!(compose_env(lb)["BACKEND_DNS"], "tasks.api");
    // Ingress would hide client addresses, the balancer's hash key.
    assert_eq!(s(&lb["ports"][0]["mode"]), "host");
    for (name, svc) in [("balancer", lb), ("api", api)] {
        let cmd = strings(&svc["command"]);
        assert_eq!(
            strings(&svc["healthcheck"]["test"]),
            ["CMD", cmd[0].as_str(), "healthcheck"]
        );
        for var in compose_env(svc).keys() {
            assert!(known_variable(var), "{file}: {name} sets unknown {var}");
        }
    }
    assert_eq!(s(&doc["networks"]["hashgate"]["driver"]), "overlay");
}

/// All Kubernetes objects of the kustomization, by `Kind/name`.
fn kube_objects() -> BTreeMap<String, Yaml> {
    let kustomization = &load("deploy/kubernetes/kustomization.yaml")[0];
    let mut out = BTreeMap::new();
    for res in strings(&kustomization["resources"]) {
        for doc in load(&format!("deploy/kubernetes/{res}")) {
            assert!(!s(&doc["apiVersion"]).is_empty(), "{res}: apiVersion");
            let key = format!("{}/{}", s(&doc["kind"]), s(&doc["metadata"]["name"]));
            assert!(out.insert(key.clone(), doc).is_none(), "{key} twice");
        }
    }
    out
}

fn container(objs: &BTreeMap<String, Yaml>, deployment: &str) -> Yaml {
    let pod = &objs[&format!("Deployment/{deployment}")]["spec"]["template"]["spec"];
    assert!(
        pod["securityContext"]["runAsNonRoot"].as_bool() == Some(true),
        "{deployment} may run as root"
    );
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
    pod["containers"][0].clone()
}

fn kube_env(c: &Yaml) -> BTreeMap<String, String> {
    c["env"]
        .as_vec()
        .expect("env")
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or("<from>").to_owned();
            (s(&e["name"]).to_owned(), value)
        })
        .collect()
}

#[test]
fn kubernetes_balancer_resolves_a_headless_api_service() {
    let objs = kube_objects();
    let svc = &objs["Service/api"];
    assert_eq!(s(&svc["spec"]["clusterIP"]), "None", "api must be headless");
    let api_port = svc["spec"]["ports"][0]["port"].as_i64().expect("port");
    let api_labels = &objs["Deployment/api"]["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_hash().expect("selector") {
        assert_eq!(&api_labels[s(k)], v, "Service/api selects no API pod");
    }

    let lb = container(&objs, "balancer");
    let env = kube_env(&lb);
    assert_eq!(env["BACKEND_DNS"], "api.$(POD_NAMESPACE).svc.cluster.local");
    assert!(env.contains_key("POD_NAMESPACE"));
    assert_eq!(env["BACKEND_PORT"].parse::<i64>().ok(), Some(api_port));
    assert_eq!(
        s(&objs["Service/balancer"]["spec"]["externalTrafficPolicy"]),
        "Local",
        "the balancer must see client addresses"
    );

    let api = container(&objs, "api");
    assert_eq!(kube_env(&api)["PORT"].parse::<i64>().ok(), Some(api_port));
    let config = objs["ConfigMap/hashgate-mysql"]["data"]
        .as_hash()
        .expect("data");
    for (name, c) in [("balancer", &lb), ("api", &api)] {
        let cmd = strings(&c["command"]);
        assert_eq!(
            strings(&c["readinessProbe"]["exec"]["command"]),
            [cmd[0].as_str(), "healthcheck"],
            "{name} readiness probe"
        );
        let names = kube_env(c).into_keys().chain(
            config
                .keys()
                .filter(|_| name == "api")
                .map(|k| s(k).to_owned()),
        );
        for var in names {
            assert!(known_variable(&var), "{name} sets unknown {var}");
        }
    }
}

#[test]
fn no_secret_is_committed_in_deploy_files() {
    for file in [
        "docker-compose.scale.yml",
        "docker-compose.cluster.yml",
        "deploy/swarm/stack.yml",
    ] {
        for svc in load(file)[0]["services"]
            .as_hash()
            .expect("services")
            .values()
        {
            let env = compose_env(svc);
            if let Some(pw) = env.get("MYSQL_PASSWORD") {
                assert!(pw.starts_with("${MYSQL_PASSWORD"), "{file}: {pw}");
            }
        }
    }
    let objs = kube_objects();
    assert!(
        !objs.keys().any(|k| k.starts_with("Secret/")),
        "create the Secret with kubectl, do not commit it"
    );
}
