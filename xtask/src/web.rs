//! The browser bundle as an npm-style package (`target/web/pkg`), and the checks of its
//! TypeScript declarations: nothing typed `any` in the public API, and a small app compiled
//! with `tsc --strict` against them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{root, run};

/// TypeScript, pinned; installed from npm into `target/typescript`.
const TYPESCRIPT: &str = "5.9.3";

/// The bundle's files that go into the package.
/// `concord_tabs.js` (several tabs on one store) and its declarations come from the page's
/// directory, beside the bundle.
const BUNDLE: [&str; 6] = [
    "concord_web.js",
    "concord_web_bg.wasm",
    "concord_web.d.ts",
    "concord_web_bg.wasm.d.ts",
    "concord_tabs.js",
    "concord_tabs.d.ts",
];

/// Lays out `bundle`'s files as a package in `bundle/pkg`: package.json with an ES module
/// entry, the wasm, the declarations and a README. Returns the package's directory.
pub(crate) fn package(bundle: &Path) -> anyhow::Result<PathBuf> {
    let pkg = bundle.join("pkg");
    std::fs::create_dir_all(&pkg).with_context(|| format!("creating {}", pkg.display()))?;
    for file in BUNDLE {
        std::fs::copy(bundle.join(file), pkg.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let (version, license) =
        (workspace_field(&manifest, "version")?, workspace_field(&manifest, "license")?);
    std::fs::write(pkg.join("package.json"), package_json(&version, &license))?;
    let readme = root().join("crates/concord-web/README.package.md");
    std::fs::copy(&readme, pkg.join("README.md"))
        .with_context(|| format!("copying {}", readme.display()))?;
    Ok(pkg)
}

fn package_json(version: &str, license: &str) -> String {
    let files = BUNDLE.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"{{
  "name": "concord-web",
  "version": "{version}",
  "description": "Concord in the browser: offline-first real-time collaboration",
  "license": "{license}",
  "type": "module",
  "module": "./concord_web.js",
  "main": "./concord_web.js",
  "types": "./concord_web.d.ts",
  "exports": {{
    ".": {{ "types": "./concord_web.d.ts", "default": "./concord_web.js" }},
    "./tabs": {{ "types": "./concord_tabs.d.ts", "default": "./concord_tabs.js" }},
    "./concord_web_bg.wasm": "./concord_web_bg.wasm"
  }},
  "files": [{files}, "README.md"],
  "sideEffects": false
}}
"#
    )
}

/// `field = "…"` of `[workspace.package]` in the root manifest.
fn workspace_field(manifest: &str, field: &str) -> anyhow::Result<String> {
    let section = manifest
        .split("\n[")
        .find(|s| s.starts_with("workspace.package]"))
        .context("no [workspace.package] in Cargo.toml")?;
    section
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == field).then(|| value.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("no {field} in [workspace.package]"))
}

/// Fails if the declarations type anything of the public API as `any`: only wasm-bindgen's
/// raw exports (`InitOutput`, which apps never call) may.
pub(crate) fn check_declarations(dts: &str) -> anyhow::Result<()> {
    let mut raw_exports = false;
    let untyped: Vec<&str> = dts
        .lines()
        .filter(|line| {
            if line.starts_with("export interface InitOutput") {
                raw_exports = true;
            } else if raw_exports && line.starts_with('}') {
                raw_exports = false;
                return false;
            }
            !raw_exports
                && line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "any")
        })
        .collect();
    if !untyped.is_empty() {
        bail!("the declarations type these as `any`:\n{}", untyped.join("\n"));
    }
    Ok(())
}

/// Installs TypeScript (pinned) and the package, from its tarball (`npm pack`) as an app
/// would, into `target/typescript`, and compiles the example app
/// (`crates/concord-web/ts-example`) with `--strict` against what was installed.
pub(crate) fn typescript_example(pkg: &Path) -> anyhow::Result<()> {
    let prefix = root().join("target/typescript");
    std::fs::create_dir_all(&prefix)?;
    let mut pack = Command::new("npm");
    pack.args(["pack", "--silent", "--pack-destination"]).arg(&prefix).current_dir(pkg);
    let packed = crate::capture(pack)?;
    if !packed.status.success() {
        bail!("npm pack failed: {}", String::from_utf8_lossy(&packed.stderr));
    }
    let tarball = prefix.join(String::from_utf8(packed.stdout)?.trim());
    // Both in one install: without a package.json, npm prunes what a later install omits.
    let mut install = Command::new("npm");
    install
        .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
        .arg(&prefix)
        .arg(format!("typescript@{TYPESCRIPT}"))
        .arg(&tarball);
    run(install).context("installing TypeScript and the package (needs npm)")?;
    let mut tsc = Command::new("node");
    tsc.arg(prefix.join("node_modules/typescript/bin/tsc"))
        .args(["--strict", "-p"])
        .arg(root().join("crates/concord-web/ts-example/tsconfig.json"));
    run(tsc).context("the TypeScript example does not compile against the declarations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_outside_the_raw_exports_is_refused() {
        let typed = "export type JsonValue = null | string;\nexport interface InitOutput {\n  \
                     readonly f: (a: number) => any;\n}\nexport class Domain { state(): string; }\n";
        assert!(check_declarations(typed).is_ok());
        let untyped = format!("{typed}export class Model {{ value(): Promise<any>; }}\n");
        let error = check_declarations(&untyped).unwrap_err().to_string();
        assert!(error.contains("Promise<any>"), "{error}");
        // Words that merely contain "any" are fine.
        assert!(check_declarations("export type Company = { many: number };\n").is_ok());
    }

    #[test]
    fn package_fields_come_from_the_workspace() {
        let manifest = "[package]\nversion = \"9\"\n[workspace.package]\nversion = \"1.2.3\"\n\
                        license = \"MIT OR Apache-2.0\"\n[workspace.dependencies]\n";
        assert_eq!(workspace_field(manifest, "version").unwrap(), "1.2.3");
        let json = package_json("1.2.3", "MIT OR Apache-2.0");
        assert!(json.contains("\"type\": \"module\"") && json.contains("\"version\": \"1.2.3\""));
        assert!(workspace_field(manifest, "edition").is_err());
    }
}
