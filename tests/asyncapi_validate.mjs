// Validates AsyncAPI documents with the official parser (@asyncapi/parser, from npm).
//
//   node tests/asyncapi_validate.mjs DOC.json [DOC.yaml ...]
//
// The parser is loaded from $ASYNCAPI_PARSER_DIR (default: .npm-asyncapi at the repository root),
// where `npm install --prefix <dir> @asyncapi/parser` put it. Prints one JSON line per document
// ({"file", "valid", "errors", "warnings"}) and exits 1 when any document has an error.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dir = path.resolve(process.env.ASYNCAPI_PARSER_DIR || path.join(root, ".npm-asyncapi"));
const require = createRequire(path.join(dir, "package.json"));
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"));
  const show = (d) => `${d.code}: ${d.message} at /${(d.path || []).join("/")}`;
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).map(show);
  const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).map(show);
  const valid = document !== undefined && errors.length === 0;
  failed ||= !valid;
  console.log(JSON.stringify({ file, valid, errors, warnings }));
}
process.exit(failed ? 1 : 0);
