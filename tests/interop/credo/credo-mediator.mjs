#!/usr/bin/env node
// credo-ts 0.6.3 as a DIDComm v1 mediator, for the side-by-side mediator benchmark
// (loadtest/mediator-peers/). Not used by the tests.
//
//   node credo/credo-mediator.mjs --port 18300      (HTTP on 18300, WebSocket on 18301)
//
// credo's MediatorModule with automatic mediation grants, message pickup 1.0/2.0 (live mode over
// the WebSocket) and messageForwardingStrategy QueueAndLiveModeDelivery (a forward is queued, then
// pushed to the recipient's live-mode session if it has one). Store: askar sqlite in memory; queue:
// credo's default in-memory queue (nothing survives a restart, unlike idstack's flushed queue).
// Prints one JSON line on stdout when ready: {"ok":true,"invitation_url":...,"http":...,"ws":...}.
// Logs go to stderr (CREDO_VERBOSE=1 for credo's debug logger). SIGTERM: clean shutdown.
import { out } from './stdio.mjs'; // first: askar library path, stdout kept for the protocol
import crypto from 'node:crypto';

const argv = process.argv.slice(2);
const portIdx = argv.indexOf('--port');
const PORT = portIdx >= 0 ? Number(argv[portIdx + 1]) : 18300;
const HOST = '127.0.0.1';

// askar-nodejs MUST be imported before @credo-ts/askar.
const { askar } = await import('@openwallet-foundation/askar-nodejs');
const { AskarModule } = await import('@credo-ts/askar');
const { Agent, ConsoleLogger, LogLevel } = await import('@credo-ts/core');
const { agentDependencies, DidCommHttpInboundTransport, DidCommWsInboundTransport } = await import('@credo-ts/node');
const { DidCommModule, DidCommHttpOutboundTransport, DidCommWsOutboundTransport, DidCommMessageForwardingStrategy } = await import('@credo-ts/didcomm');

const httpEndpoint = `http://${HOST}:${PORT}`;
const wsEndpoint = `ws://${HOST}:${PORT + 1}`;
const agent = new Agent({
  config: {
    allowInsecureHttpUrls: true,
    ...(process.env.CREDO_VERBOSE ? { logger: new ConsoleLogger(LogLevel.debug) } : {}),
  },
  dependencies: agentDependencies,
  modules: {
    askar: new AskarModule({
      askar,
      store: {
        id: `credo-mediator-${crypto.randomUUID()}`, key: 'credo-mediator-key', keyDerivationMethod: 'kdf:argon2i:int',
        database: { type: 'sqlite', config: { inMemory: true } },
      },
    }),
    didcomm: new DidCommModule({
      endpoints: [httpEndpoint, wsEndpoint],
      transports: {
        inbound: [new DidCommHttpInboundTransport({ port: PORT }), new DidCommWsInboundTransport({ port: PORT + 1 })],
        outbound: [new DidCommHttpOutboundTransport(), new DidCommWsOutboundTransport()],
      },
      connections: { autoAcceptConnections: true },
      mediator: {
        autoAcceptMediationRequests: true,
        messageForwardingStrategy: DidCommMessageForwardingStrategy.QueueAndLiveModeDelivery,
      },
      mediationRecipient: false,
      credentials: false,
      proofs: false,
    }),
  },
});
await agent.initialize();

// One reusable invitation for every agent of the benchmark.
const oob = await agent.didcomm.oob.createInvitation({ label: 'credo mediator', multiUseInvitation: true });
const invitationUrl = oob.outOfBandInvitation.toUrl({ domain: httpEndpoint });
out(JSON.stringify({ ok: true, invitation_url: invitationUrl, http: httpEndpoint, ws: wsEndpoint, pid: process.pid }) + '\n');
process.stderr.write(`[credo-mediator] ready on ${httpEndpoint} and ${wsEndpoint}\n`);

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  try {
    await Promise.race([agent.shutdown(), new Promise((r) => setTimeout(r, 5000))]);
  } catch (e) {
    process.stderr.write(`[credo-mediator] shutdown: ${e}\n`);
  }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.on('unhandledRejection', (e) => process.stderr.write(`[credo-mediator] unhandled rejection: ${e?.stack ?? e}\n`));
