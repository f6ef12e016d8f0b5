//! The SBOM: a CycloneDX 1.5 JSON document of every crate in Cargo.lock, from `cargo metadata`
//! (names, versions, licenses, sources, the dependency graph) and Cargo.lock (SHA-256 checksums).
//! A crate the `kms-killswitch` binary is built from has `scope: required`; one used only by
//! tests, benches, the simulator or this xtask has `scope: excluded`. Owns only that document.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Writes the SBOM of the workspace at `root` to `out`.
pub fn write(root: &Path, out: &Path) -> Result<()> {
    let metadata = cargo_metadata(root)?;
    let lock = fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let checksums = lock_checksums(&lock);
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let root_id = packages
        .iter()
        .find(|package| package["name"] == "kms-killswitch")
        .and_then(|package| package["id"].as_str())
        .context("cargo metadata: no kms-killswitch package")?;
    let graph = dependency_graph(&metadata)?;
    let shipped = reachable(&graph, root_id);
    let refs: BTreeMap<&str, String> = packages
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, purl(package))))
        .collect();

    let mut root_component = Value::Null;
    let mut components = Vec::new();
    for package in packages {
        let id = package["id"].as_str().unwrap_or_default();
        let component = component(package, &checksums, shipped.contains(id));
        if id == root_id {
            root_component = component;
        } else {
            components.push(component);
        }
    }
    components.sort_by_key(|component| component["bom-ref"].as_str().map(str::to_owned));
    let dependencies: Vec<Value> = graph
        .iter()
        .filter_map(|(id, deps)| {
            let depends_on: Vec<&String> = deps
                .keys()
                .filter_map(|dep| refs.get(dep.as_str()))
                .collect();
            Some(json!({ "ref": refs.get(id.as_str())?, "dependsOn": depends_on }))
        })
        .collect();
    let bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "tools": { "components": [{ "type": "application", "name": "kms-killswitch xtask sbom" }] },
            "component": root_component,
        },
        "components": components,
        "dependencies": dependencies,
    });
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&bom).context("serialising the SBOM")?;
    fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} components)", out.display(), packages.len());
    Ok(())
}

fn cargo_metadata(root: &Path) -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing cargo metadata")
}

/// `name@version` → the `checksum` of that `[[package]]` in Cargo.lock (registry crates only).
fn lock_checksums(lock: &str) -> BTreeMap<String, String> {
    let mut checksums = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|line| {
                line.strip_prefix(key)?
                    .strip_prefix(" = \"")?
                    .strip_suffix('"')
            })
        };
        if let (Some(name), Some(version), Some(checksum)) =
            (field("name"), field("version"), field("checksum"))
        {
            checksums.insert(format!("{name}@{version}"), checksum.to_owned());
        }
    }
    checksums
}

/// Package id → ids of its dependencies, with the kinds (normal, build, dev) of each edge.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn dependency_graph(metadata: &Value) -> Result<Graph> {
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?;
    let mut graph = Graph::new();
    for node in nodes {
        let id = node["id"]
            .as_str()
            .context("cargo metadata: a node without id")?;
        let edges = graph.entry(id.to_owned()).or_default();
        for dep in node["deps"].as_array().into_iter().flatten() {
            let Some(pkg) = dep["pkg"].as_str() else {
                continue;
            };
            let kinds = dep["dep_kinds"].as_array().into_iter().flatten();
            let kinds = kinds.map(|kind| kind["kind"].as_str().unwrap_or("normal").to_owned());
            edges.entry(pkg.to_owned()).or_default().extend(kinds);
        }
    }
    Ok(graph)
}

/// Every package reachable from `root` through normal and build dependencies (not dev ones).
fn reachable(graph: &Graph, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::from([root.to_owned()]);
    let mut todo = vec![root.to_owned()];
    while let Some(id) = todo.pop() {
        for (dep, kinds) in graph.get(&id).into_iter().flatten() {
            if kinds.iter().any(|kind| kind != "dev") && seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

fn purl(package: &Value) -> String {
    format!(
        "pkg:cargo/{}@{}",
        package["name"].as_str().unwrap_or_default(),
        package["version"].as_str().unwrap_or_default()
    )
}

fn component(package: &Value, checksums: &BTreeMap<String, String>, shipped: bool) -> Value {
    let name = package["name"].as_str().unwrap_or_default();
    let version = package["version"].as_str().unwrap_or_default();
    let purl = purl(package);
    let mut component = json!({
        "type": if package["targets"].as_array().into_iter().flatten().any(|t| t["kind"] == json!(["bin"])) && !shipped { "application" } else { "library" },
        "bom-ref": purl,
        "name": name,
        "version": version,
        "scope": if shipped { "required" } else { "excluded" },
        "purl": purl,
    });
    if let Some(description) = package["description"].as_str() {
        component["description"] = json!(description.trim());
    }
    if let Some(license) = package["license"].as_str() {
        // Old manifests write `MIT/Apache-2.0`; SPDX (and CycloneDX) want `MIT OR Apache-2.0`.
        component["licenses"] = json!([{ "expression": license.replace('/', " OR ") }]);
    }
    if let Some(checksum) = checksums.get(&format!("{name}@{version}")) {
        component["hashes"] = json!([{ "alg": "SHA-256", "content": checksum }]);
    }
    component
}
