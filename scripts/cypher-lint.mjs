#!/usr/bin/env node
// Check Cypher statements against Neo4j 5's own grammar and semantic analysis.
//
// Input (stdin): JSON, a list of {"query": "...", "parameters": ["name", ...], "site": "..."}
// (a bare string is a statement without parameters). Output (stdout): JSON, one entry
// per statement with its diagnostics: {"query", "site", "diagnostics": [{"severity":
// "error"|"warning", "message", "start", "end", "excerpt"}]}. Exit status: 0 when no
// statement has an error, 1 when one has, 2 when the check itself cannot run.
//   --summary  print a line per diagnostic and a closing count instead of the JSON
//   --strict   warnings (deprecations: removals in the next Cypher) fail too
//
// The analysis is @neo4j-cypher/language-support, Neo4j's published language support:
// its ANTLR grammar of Cypher 5 and Neo4j's semantic analysis (the Cypher front end
// compiled to JavaScript), asked for "CYPHER 5". Functions and procedures are checked
// against Neo4j's built-in ones (the registry the package ships, plugins such as APOC
// left out); a parameter the statement uses but the code does not pass is an error.
// Installed by `make cypher-lint` under .tools (CYPHER_LS_DIR overrides where from).

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const tools = resolve(process.env.CYPHER_LS_DIR ?? join(here, '..', '.tools'));
const VERSION = 'CYPHER 5';

async function load() {
  const require = createRequire(join(tools, 'package.json'));
  let entry;
  try {
    entry = require.resolve('@neo4j-cypher/language-support');
  } catch {
    console.error(`cypher-lint: @neo4j-cypher/language-support is not installed under ${tools} (run make cypher-lint)`);
    process.exit(2);
  }
  const pkg = JSON.parse(readFileSync(join(tools, 'node_modules', '@neo4j-cypher', 'language-support', 'package.json'), 'utf8'));
  return { ls: require(entry), version: pkg.version };
}

const { ls, version: packageVersion } = await load();
const { lintCypherQuery, testData, allCypherVersions } = ls;
if (!allCypherVersions.includes(VERSION)) {
  console.error(`cypher-lint: this language-support knows no ${VERSION} (only ${allCypherVersions})`);
  process.exit(2);
}

// Neo4j's built-in functions and procedures for Cypher 5 (the package's registry of a
// real server, without plugins).
const known = testData.mockSchema;
const builtIn = (registry, keep) =>
  Object.fromEntries(Object.entries(registry?.[VERSION] ?? {}).filter(([name, f]) => keep(name, f)));
const functions = builtIn(known.functions, (_, f) => f.isBuiltIn === true);
const procedures = builtIn(known.procedures, (name) => !name.startsWith('apoc.'));
if (Object.keys(functions).length < 50 || !functions.coalesce || !functions.properties) {
  console.error('cypher-lint: the built-in function registry is missing or changed shape');
  process.exit(2);
}

function lint(query, parameters) {
  const schema = {
    defaultLanguage: VERSION,
    functions: { [VERSION]: functions },
    procedures: { [VERSION]: procedures },
    parameters: Object.fromEntries(parameters.map((p) => [p, null])),
  };
  const diagnostics = [];
  // A statement that names another language version ("CYPHER 25 ...") is not Neo4j 5's.
  const pinned = /^\s*CYPHER\s+(\d+)/i.exec(query);
  if (pinned && `CYPHER ${pinned[1]}` !== VERSION) {
    diagnostics.push({ severity: 'error', message: `selects CYPHER ${pinned[1]}; Neo4j 5 runs ${VERSION}`, start: 0, end: pinned[0].length });
  }
  const result = lintCypherQuery(query, schema, { consoleCommandsEnabled: false });
  for (const d of result.diagnostics) {
    diagnostics.push({
      severity: d.severity === 1 ? 'error' : d.severity === 2 ? 'warning' : 'info',
      message: d.message,
      start: d.offsets?.start,
      end: d.offsets?.end,
      excerpt: d.offsets ? query.slice(d.offsets.start, d.offsets.end) : undefined,
    });
  }
  return diagnostics;
}

// The semantic analysis is called through a wrapper that swallows its exceptions: make
// sure it runs here before trusting an empty answer.
const probes = [
  ['WITH 1 AS a RETURN b', 'Variable `b` not defined'],
  ['MATCH (n) WHERE exists(n.p) RETURN n', 'no longer supported'],
];
for (const [query, expected] of probes) {
  if (!lint(query, []).some((d) => d.severity === 'error' && d.message.includes(expected))) {
    console.error(`cypher-lint: the semantic analysis did not run (no "${expected}" for: ${query})`);
    process.exit(2);
  }
}

const input = JSON.parse(readFileSync(0, 'utf8'));
if (!Array.isArray(input)) {
  console.error('cypher-lint: expected a JSON list of statements on stdin');
  process.exit(2);
}
const out = input.map((item) => {
  const s = typeof item === 'string' ? { query: item, parameters: [] } : item;
  return { query: s.query, site: s.site, diagnostics: lint(s.query, s.parameters ?? []) };
});
const args = process.argv.slice(2);
const failing = new Set(args.includes('--strict') ? ['error', 'warning'] : ['error']);
const failed = out.filter((r) => r.diagnostics.some((d) => failing.has(d.severity)));
if (args.includes('--summary')) {
  for (const r of out) {
    for (const d of r.diagnostics) {
      console.log(`${r.site ?? '-'}: ${d.severity}: ${d.message}\n    at ${JSON.stringify(d.excerpt)} in: ${r.query}`);
    }
  }
  const what = `${out.length} statements, ${VERSION} (@neo4j-cypher/language-support ${packageVersion})`;
  console.log(failed.length ? `cypher lint: ${failed.length} of ${what} rejected` : `cypher lint: clean (${what})`);
} else {
  process.stdout.write(JSON.stringify({ version: VERSION, package: packageVersion, results: out }, null, 1) + '\n');
}
process.exit(failed.length ? 1 : 0);
