// Shared start of the credo-ts scripts driven over stdin/stdout (credo-mediation.mjs,
// credo-mediator.mjs). Import it before anything else:
// - LIB_ASKAR_PATH defaults to ./lib/x/aries_askar (where install.sh puts the library from PyPI),
//   which askar-nodejs reads when it is imported;
// - stdout carries only the script's own JSON lines: console.log/info/debug/warn go to stderr,
//   and `out` is the private handle on the real stdout.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!process.env.LIB_ASKAR_PATH) {
  const local = path.join(here, 'lib', 'x', 'aries_askar');
  if (fs.existsSync(path.join(local, 'libaries_askar.so'))) process.env.LIB_ASKAR_PATH = local;
}

export const out = process.stdout.write.bind(process.stdout);
for (const m of ['log', 'info', 'debug', 'warn']) console[m] = (...a) => process.stderr.write(a.map(String).join(' ') + '\n');
