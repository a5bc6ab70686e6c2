#!/usr/bin/env node
// Compiles contracts/**/*.sol with the pinned npm `solc` and writes contracts/artifacts/<Name>.json.
// With --check, compiles and exits 1 if the committed artifacts differ from a fresh build.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const sourceDir = path.join(root, "contracts");
const artifactDir = path.join(sourceDir, "artifacts");
const check = process.argv.includes("--check");

function listSources(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === "artifacts" ? [] : listSources(full);
    return entry.name.endsWith(".sol") ? [full] : [];
  }).sort();
}

const sources = {};
for (const file of listSources(sourceDir)) {
  sources[path.relative(sourceDir, file)] = { content: fs.readFileSync(file, "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    viaIR: true,
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(2);

const built = {};
for (const [source, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    // interfaces, and libraries of internal functions only, have nothing to deploy
    const deployable = c.abi.some((item) => ["function", "constructor", "receive"].includes(item.type));
    if (!c.evm.bytecode.object || !deployable) continue;
    built[`${name}.json`] = JSON.stringify({
      contractName: name,
      sourceName: source,
      compiler: `solc-${solc.version()}`,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    }, null, 2) + "\n";
  }
}

if (check) {
  const stale = [];
  const present = fs.existsSync(artifactDir) ? fs.readdirSync(artifactDir).filter((f) => f.endsWith(".json")) : [];
  for (const [file, text] of Object.entries(built)) {
    const target = path.join(artifactDir, file);
    if (!fs.existsSync(target) || fs.readFileSync(target, "utf8") !== text) stale.push(file);
  }
  for (const file of present) if (!(file in built)) stale.push(`${file} (no longer built)`);
  if (stale.length) {
    console.error(`stale artifacts: ${stale.join(", ")}; run: node scripts/compile_contracts.js`);
    process.exit(1);
  }
  console.log(`artifacts up to date (${Object.keys(built).length} contracts)`);
} else {
  fs.mkdirSync(artifactDir, { recursive: true });
  for (const file of fs.readdirSync(artifactDir)) if (file.endsWith(".json")) fs.unlinkSync(path.join(artifactDir, file));
  for (const [file, text] of Object.entries(built)) fs.writeFileSync(path.join(artifactDir, file), text);
  console.log(`wrote ${Object.keys(built).length} artifacts to ${path.relative(root, artifactDir)}`);
}
