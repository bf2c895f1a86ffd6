#!/usr/bin/env node
// credo-ts 0.6.3 DIDComm v1 agent (mediation recipient and/or plain peer) for idstack mediator tests.
//
//   node credo/credo-mediation.mjs --label alice     (LIB_ASKAR_PATH defaults to ./lib/x/aries_askar)
//
// Line protocol: one JSON command per stdin line, exactly one JSON line per command on stdout.
//   {"cmd":"start","mediatorInvitationUrl":"<oob url>"|null,"pickup":"live"|"polling"|"implicit"|"none","transport":"ws"|"http",
//    "handshake":"didexchange"|"connections"|null (optional: force that handshake family), "timeoutMs":20000}
//       Builds the agent (askar in-memory, outbound WS + HTTP). With a mediator invitation: connects to the
//       mediator (only over `transport`), requests and awaits the mediation grant, makes it the default
//       mediator and starts pickup v2 (live mode over WebSocket, or polling every 500 ms), or implicit pickup
//       (a trust ping with return-route on a WebSocket the mediator then pushes the queue down).
//       Without one: opens its own HTTP inbound endpoint on 127.0.0.1 (a plain, unmediated peer).
//       -> {"ok":true,"mediator_connection_id":...,"routing_keys":[...],"endpoints":[...]}
//   {"cmd":"createInvitation"}                    -> {"ok":true,"invitation_url":...,"invitation":{...}}
//   {"cmd":"receiveInvitation","invitationUrl":...,"timeoutMs":20000} -> {"ok":true,"connection_id":...}
//   {"cmd":"sendMessage","connectionId":...,"content":"..."}        -> {"ok":true}
//   {"cmd":"sendMessages","connectionId":...,"prefix":"m","count":N} -> {"ok":true,"sent":N} ("m-0" … "m-(N-1)")
//       one after the other (each send awaited); with "stamp":true each content gets "@<send start, epoch ms>"
//       appended (for the benchmark in loadtest/mediator-peers/)
//   {"cmd":"packMessages","connectionId":...,"prefix":"m","count":N} -> {"ok":true,"packed":N,"endpoints":[...]}
//       credo packs the N messages as sendMessages would (forward-wrapped for the peer's mediator) and keeps
//       the envelopes instead of sending them
//   {"cmd":"postPacked","concurrency":1,"url":null,"rate":null} -> {"ok":true,"sent":N,"started_at":[epoch ms per message]}
//       posts the kept envelopes in order to their endpoint (or to `url`: a mediator's HTTP inbound when the
//       peer's endpoint is its WebSocket), each answer awaited, `concurrency` at a time; with `rate` (msg/s)
//       message i is not posted before i/rate s after the first
//   {"cmd":"messages","expect":N,"contains":["..."],"timeoutMs":20000}
//       waits until N basic messages have been received in total (and every `contains` content is among them;
//       optional) -> {"ok":true,"messages":[all contents in arrival order],"duplicates":[contents seen twice+]}
//       (with "times":true also "received_at":[epoch ms, fractional, when credo emitted each message's event])
//       (on timeout: {"ok":false,"error":...,"messages":[...],"duplicates":[...]})
//   {"cmd":"pingMediator","timeoutMs":10000}      -> {"ok":true,"rtt_ms":...}   (trust ping, response requested)
//   {"cmd":"stopPickup"}    stop the pickup loop and close the WebSocket(s) to the mediator -> {"ok":true,"closed_sockets":n}
//   {"cmd":"startPickup"}   restart pickup with the strategy given to start               -> {"ok":true}
//   {"cmd":"dropNextDelivery","count":1}   fault injection for the loss test: the next `count` pickup deliveries
//       are thrown away unprocessed and NOT acknowledged; on the first one the pickup stops and the WebSocket
//       closes (as if the phone died). Then `startPickup`: the mediator must deliver them again. -> {"ok":true,"armed":n}
//   {"cmd":"offerCredential","connectionId":...,"claims":{...}}   issue-credential 2.0 offer of a W3C JSON-LD
//       credential (Ed25519Signature2018, signed with a did:key this agent makes), auto-accepting the rest
//       -> {"ok":true,"credential_exchange_id":...,"state":"offer-sent","issuer_did":...}
//   {"cmd":"awaitCredential","credentialExchangeId":...,"timeoutMs":20000}   until the holder acknowledged it
//       -> {"ok":true,"state":"done"}   (otherwise ok:false with the state reached)
//   {"cmd":"info"}          -> {"ok":true,label,started,mediator_connection_id,pickup_active,dropped_deliveries,
//                               dropped_message_ids,connections:[...],received:n}
//   {"cmd":"shutdown"}      -> {"ok":true} and exit 0
// Errors: {"ok":false,"error":"..."}; the process keeps running. Logs go to stderr only.
// Env: CREDO_VERBOSE=1 credo debug logger; CREDO_TRACE=1 every decrypted DIDComm message this agent
// packs or unpacks, as one `TRACE {"who","dir":"in"|"out","alg","from","to":[kids],"msg":{...}}` line on stderr
// (credo packs per service tried: a message the transport restriction refused for the first service shows twice).
// Transport restriction: on the mediator connection only `transport` is used (the other scheme is refused and
// credo falls through to the next service of the mediator's DID document), so the mediator must offer it.
import { out } from './stdio.mjs'; // first: askar library path, stdout kept for the protocol
import crypto from 'node:crypto';
import http from 'node:http';
import readline from 'node:readline';

const argv = process.argv.slice(2);
const labelIdx = argv.indexOf('--label');
const LABEL = labelIdx >= 0 && argv[labelIdx + 1] ? argv[labelIdx + 1] : 'credo-mediation';
const log = (...a) => process.stderr.write(`[credo-mediation ${LABEL}] ${a.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' ')}\n`);
const reply = (obj) => out(JSON.stringify(obj) + '\n');

// askar-nodejs MUST be imported before @credo-ts/askar.
const { askar } = await import('@openwallet-foundation/askar-nodejs');
const { AskarModule } = await import('@credo-ts/askar');
const { Agent, ConsoleLogger, LogLevel, TypedArrayEncoder } = await import('@credo-ts/core');
const { agentDependencies, DidCommHttpInboundTransport } = await import('@credo-ts/node');
const {
  DidCommModule, DidCommHttpOutboundTransport, DidCommWsOutboundTransport, DidCommEnvelopeService,
  DidCommMediatorPickupStrategy, DidCommBasicMessageEventTypes, DidCommBasicMessageRole, DidCommTrustPingEventTypes,
  DidCommCredentialV2Protocol, DidCommJsonLdCredentialFormatService, DidCommAutoAcceptCredential, DidCommCredentialState,
  DidCommCredentialEventTypes,
} = await import('@credo-ts/didcomm');

// ---------------------------------------------------------------------------------------------
// State
let agent = null;
let startOpts = null; // { pickup, transport, mediated }
let mediatorOobId = null;
let mediatorConnectionId = null;
let pickupStrategy = DidCommMediatorPickupStrategy.None;
let ownEndpoint = null;
let pickupActive = false;
const received = []; // basic message contents, in arrival order
const receivedAt = []; // epoch ms (fractional) of each, same order
const nowMs = () => performance.timeOrigin + performance.now();
const waiters = new Set(); // () => void, re-checked on every received message
const connectionOobCache = new Map(); // connectionId -> outOfBandId

// Messages on the mediator connection go only over the transport chosen in `start` (idstack lists
// both the HTTP and the WebSocket endpoint; credo would otherwise use whichever comes first). A
// transport refusing a send makes credo try the next service in the mediator's DID document.
async function isMediatorConnection(connectionId) {
  if (!connectionId || !agent || !mediatorOobId) return false;
  if (connectionId === mediatorConnectionId) return true;
  if (!connectionOobCache.has(connectionId)) {
    const c = await agent.didcomm.connections.findById(connectionId);
    if (!c) return false;
    connectionOobCache.set(connectionId, c.outOfBandId);
  }
  return connectionOobCache.get(connectionId) === mediatorOobId;
}
async function checkTransport(kind, pkg) {
  if (startOpts?.mediated && startOpts.transport !== kind && (await isMediatorConnection(pkg.connectionId))) {
    throw new Error(`mediator connection restricted to ${startOpts.transport}; not using ${kind} endpoint ${pkg.endpoint}`);
  }
}
// `packMessages` captures the envelopes credo would send to a peer (not to the mediator) instead of
// sending them; `postPacked` posts them later over HTTP.
let capture = null; // array while capturing
async function captured(pkg) {
  if (!capture || (await isMediatorConnection(pkg.connectionId))) return false;
  capture.push({ endpoint: pkg.endpoint, payload: pkg.payload });
  return true;
}
class RestrictedHttpOutboundTransport extends DidCommHttpOutboundTransport {
  async sendMessage(pkg) {
    if (await captured(pkg)) return;
    await checkTransport('http', pkg);
    return super.sendMessage(pkg);
  }
}
class RestrictedWsOutboundTransport extends DidCommWsOutboundTransport {
  async sendMessage(pkg) {
    if (await captured(pkg)) return;
    await checkTransport('ws', pkg);
    return super.sendMessage(pkg);
  }
  // Close every open socket (optionally only those for one connection); resolves when closed.
  async closeSockets(connectionId) {
    const closing = [];
    for (const [socketId, socket] of this.transportTable) {
      if (connectionId && !socketId.endsWith(`-${connectionId}`)) continue;
      if (socket.readyState === this.WebSocketClass.CLOSED) continue;
      closing.push(new Promise((resolve) => {
        const t = setTimeout(resolve, 3000);
        socket.addEventListener('close', () => { clearTimeout(t); resolve(); });
      }));
      log(`closing WebSocket ${socketId}`);
      socket.close();
    }
    await Promise.all(closing);
    return closing.length;
  }
}
let wsOutbound = null;

// Wraps credo's envelope service: optional tracing of every plaintext, and the `dropNextDelivery` fault
// (a pickup `delivery` is thrown away unprocessed and unacknowledged, the pickup stops and the WebSocket
// closes: a client that vanishes between delivery and messages-received).
let dropDeliveries = 0; // armed drops left
let droppedDeliveries = 0; // deliveries thrown away so far
const droppedMessageIds = [];
function installEnvelopeHooks(a) {
  const trace = Boolean(process.env.CREDO_TRACE);
  const env = a.dependencyManager.resolve(DidCommEnvelopeService);
  const enc = env.encryptDidcommV1Message.bind(env);
  const dec = env.decryptDidcommV1Message.bind(env);
  const hdr = (p) => JSON.parse(Buffer.from(p, 'base64url').toString());
  if (trace) {
    env.encryptDidcommV1Message = async (ctx, message, recipientKeys, senderKey) => {
      const r = await enc(ctx, message, recipientKeys, senderKey);
      const h = hdr(r.protected);
      process.stderr.write(`TRACE ${JSON.stringify({ who: LABEL, dir: 'out', t: Date.now(), alg: h.alg, from: senderKey ? TypedArrayEncoder.toBase58(senderKey.publicKey.publicKey) : null, to: h.recipients.map((x) => x.header.kid), msg: message })}\n`);
      return r;
    };
  }
  env.decryptDidcommV1Message = async (ctx, encrypted) => {
    const r = await dec(ctx, encrypted);
    if (trace) {
      const h = hdr(encrypted.protected);
      process.stderr.write(`TRACE ${JSON.stringify({ who: LABEL, dir: 'in', t: Date.now(), alg: h.alg, from: r.senderKey ? TypedArrayEncoder.toBase58(r.senderKey.publicKey.publicKey) : null, to: h.recipients.map((x) => x.header.kid), msg: r.plaintextMessage })}\n`);
    }
    const type = r.plaintextMessage?.['@type'] ?? '';
    if (dropDeliveries > 0 && type.endsWith('/messagepickup/2.0/delivery')) {
      dropDeliveries--;
      droppedDeliveries++;
      const ids = (r.plaintextMessage['~attach'] ?? []).map((x) => x['@id']);
      droppedMessageIds.push(...ids);
      log(`dropping delivery ${r.plaintextMessage['@id']} (attachments ${JSON.stringify(ids)}) without messages-received; stopping pickup`);
      pickupActive = false;
      a.didcomm.mediationRecipient.stopMessagePickup()
        .then(() => wsOutbound.closeSockets(mediatorConnectionId))
        .catch((e) => log(`drop: ${e}`));
      throw new Error('delivery dropped on purpose (dropNextDelivery)');
    }
    return r;
  };
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = http.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function requireAgent() {
  if (!agent) throw new Error('agent not started (send {"cmd":"start"} first)');
}
function requireMediator() {
  requireAgent();
  if (!mediatorConnectionId) throw new Error('no mediator (start was given no mediatorInvitationUrl)');
}

// ---------------------------------------------------------------------------------------------
// Commands
async function startAgent({ mediatorInvitationUrl = null, pickup = 'live', transport = 'ws', handshake = null, timeoutMs = 20000 }) {
  if (agent) throw new Error('already started');
  if (!['live', 'polling', 'implicit', 'none'].includes(pickup)) throw new Error('pickup must be live, polling, implicit or none');
  if (!['ws', 'http'].includes(transport)) throw new Error('transport must be ws or http');
  if (handshake !== null && !['didexchange', 'connections'].includes(handshake)) throw new Error('handshake must be didexchange, connections or null');
  if (mediatorInvitationUrl != null && typeof mediatorInvitationUrl !== 'string') throw new Error('mediatorInvitationUrl must be a string or null');
  if (mediatorInvitationUrl && ['live', 'implicit'].includes(pickup) && transport !== 'ws') throw new Error(`${pickup} pickup needs transport ws`);
  const mediated = Boolean(mediatorInvitationUrl);
  startOpts = { pickup, transport, mediated };
  pickupStrategy = { live: DidCommMediatorPickupStrategy.PickUpV2LiveMode, polling: DidCommMediatorPickupStrategy.PickUpV2, implicit: DidCommMediatorPickupStrategy.Implicit, none: DidCommMediatorPickupStrategy.None }[pickup];

  const inbound = [];
  let endpoints;
  if (!mediated) {
    const port = await freePort();
    ownEndpoint = `http://127.0.0.1:${port}`;
    inbound.push(new DidCommHttpInboundTransport({ port }));
    endpoints = [ownEndpoint];
  }
  wsOutbound = new RestrictedWsOutboundTransport();
  const a = new Agent({
    config: {
      allowInsecureHttpUrls: true,
      ...(process.env.CREDO_VERBOSE ? { logger: new ConsoleLogger(LogLevel.debug) } : {}),
    },
    dependencies: agentDependencies,
    modules: {
      askar: new AskarModule({
        askar,
        store: {
          id: `mediation-${LABEL}-${crypto.randomUUID()}`, key: 'mediation-test-key', keyDerivationMethod: 'kdf:argon2i:int',
          database: { type: 'sqlite', config: { inMemory: true } },
        },
      }),
      didcomm: new DidCommModule({
        ...(endpoints ? { endpoints } : {}),
        transports: { inbound, outbound: [new RestrictedHttpOutboundTransport(), wsOutbound] },
        connections: { autoAcceptConnections: true },
        mediator: false,
        mediationRecipient: { mediatorPollingInterval: 500, maximumMessagePickup: 50, baseMediatorReconnectionIntervalMs: 500 },
        // issuer side of issue-credential 2.0 with W3C JSON-LD credentials (see offerCredential)
        credentials: {
          autoAcceptCredentials: DidCommAutoAcceptCredential.Always,
          credentialProtocols: [new DidCommCredentialV2Protocol({ credentialFormats: [new DidCommJsonLdCredentialFormatService()] })],
        },
        proofs: false,
      }),
    },
  });
  installEnvelopeHooks(a);
  await a.initialize();
  agent = a;

  agent.events.on(DidCommBasicMessageEventTypes.DidCommBasicMessageStateChanged, (e) => {
    const { message, basicMessageRecord } = e.payload;
    if (basicMessageRecord.role !== DidCommBasicMessageRole.Receiver) return;
    received.push(message.content);
    receivedAt.push(nowMs());
    log(`basic message #${received.length} from ${basicMessageRecord.connectionId}: ${message.content}`);
    for (const w of [...waiters]) w();
  });

  if (!mediated) {
    log(`started unmediated, endpoint ${ownEndpoint}`);
    return { mediator_connection_id: null, routing_keys: [], endpoints };
  }

  const invitation = await agent.didcomm.oob.parseInvitation(mediatorInvitationUrl);
  if (handshake) {
    // credo uses the first handshake protocol of the invitation it supports; keep only the requested family.
    const kept = (invitation.handshakeProtocols ?? []).filter((p) => p.includes(`/${handshake}/`));
    if (kept.length === 0) throw new Error(`mediator invitation offers no ${handshake} handshake: ${JSON.stringify(invitation.handshakeProtocols)}`);
    invitation.handshakeProtocols = kept;
  }
  const { outOfBandRecord } = await agent.didcomm.oob.receiveInvitation(invitation, { label: LABEL, autoAcceptInvitation: false });
  mediatorOobId = outOfBandRecord.id;
  const { connectionRecord } = await agent.didcomm.oob.acceptInvitation(outOfBandRecord.id, { label: LABEL, autoAcceptConnection: true, timeoutMs });
  if (!connectionRecord) throw new Error('mediator invitation did not create a connection');
  const conn = await agent.didcomm.connections.returnWhenIsConnected(connectionRecord.id, { timeoutMs });
  mediatorConnectionId = conn.id;
  if (transport === 'ws') {
    // credo sends the DID exchange `complete` with `~transport.return_route: "none"`, and credo's own
    // mediator closes the WebSocket on such a message. Let that close land before the mediate-request
    // goes out, or the request may ride a socket that is being closed and the grant is queued instead.
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  log(`connected to mediator, connection ${conn.id} (protocol ${conn.protocol}, their did ${conn.theirDid})`);
  const mediation = await agent.didcomm.mediationRecipient.requestAndAwaitGrant(conn, timeoutMs);
  await agent.didcomm.mediationRecipient.setDefaultMediator(mediation);
  log(`mediation granted: endpoint ${mediation.endpoint} routing keys ${JSON.stringify(mediation.routingKeys)}`);
  if (pickupStrategy !== DidCommMediatorPickupStrategy.None) {
    await agent.didcomm.mediationRecipient.initiateMessagePickup(mediation, pickupStrategy);
    pickupActive = true;
  }
  return {
    mediator_connection_id: conn.id,
    connection_protocol: conn.protocol,
    mediator_did: conn.theirDid,
    our_did: conn.did,
    routing_keys: mediation.routingKeys,
    endpoints: mediation.endpoint ? [mediation.endpoint] : [],
  };
}

// A failed start leaves nothing behind, so `start` can be sent again.
async function cmdStart(msg) {
  if (agent) throw new Error('already started');
  try {
    return await startAgent(msg);
  } catch (e) {
    const a = agent;
    agent = null; startOpts = null; mediatorOobId = null; mediatorConnectionId = null; ownEndpoint = null; pickupActive = false;
    connectionOobCache.clear();
    if (a) {
      try { await a.didcomm.mediationRecipient.stopMessagePickup(); } catch {}
      try { await Promise.race([a.shutdown(), new Promise((r) => setTimeout(r, 5000))]); } catch {}
    }
    throw e;
  }
}

async function cmdCreateInvitation() {
  requireAgent();
  const oob = await agent.didcomm.oob.createInvitation({ label: LABEL });
  const invitation = oob.outOfBandInvitation;
  return { invitation_url: invitation.toUrl({ domain: 'https://credo-mediation.invalid' }), invitation: invitation.toJSON(), out_of_band_id: oob.id };
}

async function cmdReceiveInvitation({ invitationUrl, timeoutMs = 20000 }) {
  requireAgent();
  if (typeof invitationUrl !== 'string') throw new Error('invitationUrl must be a string');
  const { connectionRecord } = await agent.didcomm.oob.receiveInvitationFromUrl(invitationUrl, { label: LABEL, autoAcceptConnection: true });
  if (!connectionRecord) throw new Error('invitation did not create a connection (no handshake protocols?)');
  const conn = await agent.didcomm.connections.returnWhenIsConnected(connectionRecord.id, { timeoutMs });
  return { connection_id: conn.id, connection_protocol: conn.protocol, their_label: conn.theirLabel };
}

async function cmdSendMessage({ connectionId, content }) {
  requireAgent();
  if (typeof connectionId !== 'string') throw new Error('connectionId must be a string');
  if (typeof content !== 'string') throw new Error('content must be a string');
  const record = await agent.didcomm.basicMessages.sendMessage(connectionId, content);
  return { message_id: record.threadId };
}

// {"cmd":"sendMessages","connectionId":...,"prefix":"m","count":N} sends "<prefix>-0" … "<prefix>-(N-1)" in order.
async function cmdSendMessages({ connectionId, prefix = 'm', count = 1, stamp = false }) {
  requireAgent();
  if (typeof connectionId !== 'string') throw new Error('connectionId must be a string');
  if (!Number.isInteger(count) || count < 1) throw new Error('count must be a positive integer');
  for (let i = 0; i < count; i++) {
    await agent.didcomm.basicMessages.sendMessage(connectionId, stamp ? `${prefix}-${i}@${nowMs()}` : `${prefix}-${i}`);
  }
  return { sent: count };
}

// {"cmd":"packMessages","connectionId":...,"prefix":"m","count":N} has credo pack "<prefix>-0" … (every step of
// sendMessage: records, encryption, forward wrapping for the peer's mediator) but keeps the envelopes instead
// of sending them. {"cmd":"postPacked","concurrency":1,"url":null} then posts them in order (HTTP, each answer
// awaited, `concurrency` at a time) -> {"ok":true,"sent":N,"started_at":[epoch ms per message],"endpoint":...}.
// A sender whose own cost is one HTTP post per message (the benchmark's "replay" sender).
let packed = [];
async function cmdPackMessages({ connectionId, prefix = 'm', count = 1 }) {
  requireAgent();
  if (typeof connectionId !== 'string') throw new Error('connectionId must be a string');
  if (!Number.isInteger(count) || count < 1) throw new Error('count must be a positive integer');
  capture = [];
  try {
    for (let i = 0; i < count; i++) {
      const before = capture.length;
      await agent.didcomm.basicMessages.sendMessage(connectionId, `${prefix}-${i}`);
      if (capture.length !== before + 1) throw new Error(`message ${i}: ${capture.length - before} envelopes captured, expected 1`);
    }
    packed = capture;
  } finally {
    capture = null;
  }
  const endpoints = [...new Set(packed.map((p) => p.endpoint))];
  return { packed: packed.length, endpoints };
}
async function cmdPostPacked({ concurrency = 1, url = null, rate = null }) {
  requireAgent();
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error('concurrency must be a positive integer');
  if (rate !== null && !(typeof rate === 'number' && rate > 0)) throw new Error('rate must be a positive number (messages per second)');
  if (url !== null && !/^https?:/.test(url)) throw new Error('url must be an http(s) URL');
  for (const p of packed) {
    if (url) p.endpoint = url;
    else if (!/^https?:/.test(p.endpoint)) throw new Error(`postPacked posts over HTTP; ${p.endpoint} needs a "url"`);
  }
  const startedAt = new Array(packed.length);
  let next = 0;
  const t0 = nowMs();
  const worker = async () => {
    while (next < packed.length) {
      const i = next++;
      const { endpoint, payload } = packed[i];
      if (rate) {
        const wait = t0 + (i * 1000) / rate - nowMs();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      startedAt[i] = nowMs();
      const r = await fetch(endpoint, { method: 'POST', headers: { 'Content-Type': 'application/didcomm-envelope-enc' }, body: JSON.stringify(payload) });
      await r.arrayBuffer();
      if (r.status >= 300) throw new Error(`message ${i}: ${endpoint} answered ${r.status}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, packed.length) }, worker));
  const sent = packed.length;
  const endpoint = packed[0]?.endpoint;
  packed = [];
  return { sent, started_at: startedAt, endpoint };
}

function duplicates() {
  const seen = new Set();
  const dup = new Set();
  for (const m of received) (seen.has(m) ? dup : seen).add(m);
  return [...dup];
}

async function cmdMessages({ expect = 0, contains = [], timeoutMs = 20000, times = false }) {
  requireAgent();
  if (!Number.isInteger(expect) || expect < 0) throw new Error('expect must be a non-negative integer');
  if (!Array.isArray(contains) || !contains.every((c) => typeof c === 'string')) throw new Error('contains must be an array of strings');
  const satisfied = () => received.length >= expect && contains.every((c) => received.includes(c));
  if (!satisfied()) {
    await new Promise((resolve) => {
      const done = () => { clearTimeout(t); waiters.delete(check); resolve(); };
      const check = () => { if (satisfied()) done(); };
      const t = setTimeout(done, timeoutMs);
      waiters.add(check);
    });
  }
  if (!satisfied()) {
    const missing = contains.filter((c) => !received.includes(c));
    const e = new Error(`timeout after ${timeoutMs} ms: received ${received.length} of ${expect} basic messages${missing.length ? `, missing ${JSON.stringify(missing)}` : ''}`);
    e.extra = { messages: [...received], duplicates: duplicates(), ...(times ? { received_at: [...receivedAt] } : {}) };
    throw e;
  }
  return { messages: [...received], duplicates: duplicates(), ...(times ? { received_at: [...receivedAt] } : {}) };
}

async function cmdPingMediator({ timeoutMs = 10000 }) {
  requireMediator();
  const started = performance.now();
  let ping;
  let onResponse;
  let timer;
  const pending = []; // responses that arrive before sendPing returns (return route)
  const response = new Promise((resolve, reject) => {
    onResponse = (e) => {
      const thid = e.payload.message.threadId;
      if (ping ? thid === ping.id : (pending.push(thid), false)) resolve();
    };
    timer = setTimeout(() => reject(new Error(`no trust ping response within ${timeoutMs} ms`)), timeoutMs);
    agent.events.on(DidCommTrustPingEventTypes.DidCommTrustPingResponseReceivedEvent, onResponse);
  });
  try {
    ping = await agent.didcomm.connections.sendPing(mediatorConnectionId, { responseRequested: true });
    if (pending.includes(ping.id)) onResponse({ payload: { message: { threadId: ping.id } } });
    await response;
    return { rtt_ms: Math.round((performance.now() - started) * 10) / 10, ping_id: ping.id };
  } finally {
    clearTimeout(timer);
    agent.events.off(DidCommTrustPingEventTypes.DidCommTrustPingResponseReceivedEvent, onResponse);
  }
}

async function cmdStopPickup() {
  requireMediator();
  await agent.didcomm.mediationRecipient.stopMessagePickup();
  pickupActive = false;
  const closed = await wsOutbound.closeSockets(mediatorConnectionId);
  log(`pickup stopped, closed ${closed} WebSocket(s)`);
  return { closed_sockets: closed };
}

async function cmdStartPickup() {
  requireMediator();
  if (pickupStrategy === DidCommMediatorPickupStrategy.None) throw new Error('start was given pickup "none"');
  if (pickupActive) throw new Error('pickup already running (send stopPickup first)');
  const mediation = await agent.didcomm.mediationRecipient.findDefaultMediator();
  await agent.didcomm.mediationRecipient.initiateMessagePickup(mediation, pickupStrategy);
  pickupActive = true;
  return {};
}

async function cmdDropNextDelivery({ count = 1 }) {
  requireMediator();
  if (!Number.isInteger(count) || count < 1) throw new Error('count must be a positive integer');
  dropDeliveries = count;
  return { armed: count };
}

// did:key (Ed25519) this agent signs JSON-LD credentials with; made on first use.
let issuerDid = null;
async function ensureIssuerDid() {
  if (issuerDid) return issuerDid;
  const r = await agent.dids.create({ method: 'key', options: { createKey: { type: { kty: 'OKP', crv: 'Ed25519' } } } });
  if (r.didState.state !== 'finished') throw new Error(`did:key creation failed: ${JSON.stringify(r.didState)}`);
  issuerDid = r.didState.did;
  return issuerDid;
}

async function cmdOfferCredential({ connectionId, claims = { given_name: 'Erika', family_name: 'Mustermann' }, context = null }) {
  requireAgent();
  if (typeof connectionId !== 'string') throw new Error('connectionId must be a string');
  const did = await ensureIssuerDid();
  const record = await agent.didcomm.credentials.offerCredential({
    connectionId,
    protocolVersion: 'v2',
    autoAcceptCredential: DidCommAutoAcceptCredential.Always,
    credentialFormats: {
      jsonld: {
        credential: {
          // the inline @vocab needs no network to expand the claims (CI has no internet)
          '@context': context ?? ['https://www.w3.org/2018/credentials/v1', { '@vocab': 'https://credo-mediation.invalid/vocab#' }],
          type: ['VerifiableCredential'],
          issuer: did,
          issuanceDate: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
          credentialSubject: { ...claims },
        },
        options: { proofType: 'Ed25519Signature2018', proofPurpose: 'assertionMethod' },
      },
    },
  });
  return { credential_exchange_id: record.id, state: record.state, issuer_did: did };
}

// Waits until the exchange is `done` (the holder acknowledged the credential).
async function cmdAwaitCredential({ credentialExchangeId, timeoutMs = 20000 }) {
  requireAgent();
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await agent.didcomm.credentials.getById(credentialExchangeId);
    if (r.state === DidCommCredentialState.Done || r.state === DidCommCredentialState.Abandoned || Date.now() > deadline) {
      const ok = r.state === DidCommCredentialState.Done;
      if (!ok) throw Object.assign(new Error(`credential exchange ended in state ${r.state}`), { extra: { state: r.state, error_message: r.errorMessage } });
      return { state: r.state };
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function cmdInfo() {
  const connections = agent ? (await agent.didcomm.connections.getAll()).map((c) => ({ id: c.id, state: c.state, protocol: c.protocol, their_label: c.theirLabel, did: c.did, their_did: c.theirDid })) : [];
  return { label: LABEL, started: Boolean(agent), ...startOpts, mediator_connection_id: mediatorConnectionId, pickup_active: pickupActive, dropped_deliveries: droppedDeliveries, dropped_message_ids: droppedMessageIds, own_endpoint: ownEndpoint, connections, received: received.length };
}

let shuttingDown = false;
async function shutdown(code = 0) {
  if (shuttingDown) return;
  shuttingDown = true;
  if (agent) {
    try { await agent.didcomm.mediationRecipient?.stopMessagePickup(); } catch {}
    try {
      await Promise.race([agent.shutdown(), new Promise((r) => setTimeout(r, 5000))]);
    } catch (e) { log(`agent shutdown: ${e}`); }
  }
  process.exit(code);
}

const handlers = {
  start: cmdStart, createInvitation: cmdCreateInvitation, receiveInvitation: cmdReceiveInvitation, sendMessage: cmdSendMessage, sendMessages: cmdSendMessages, packMessages: cmdPackMessages, postPacked: cmdPostPacked,
  messages: cmdMessages, pingMediator: cmdPingMediator, offerCredential: cmdOfferCredential, awaitCredential: cmdAwaitCredential, dropNextDelivery: cmdDropNextDelivery, stopPickup: cmdStopPickup, startPickup: cmdStartPickup, info: cmdInfo,
};

// Commands are processed strictly in order (one answer line per command, in order).
let chain = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      reply({ ok: false, error: `invalid JSON: ${e.message}` });
      return;
    }
    if (msg?.cmd === 'shutdown') {
      reply({ ok: true });
      await shutdown(0);
      return;
    }
    const h = handlers[msg?.cmd];
    if (!h) {
      reply({ ok: false, error: `unknown cmd ${JSON.stringify(msg?.cmd)}` });
      return;
    }
    try {
      reply({ ok: true, ...(await h(msg)) });
    } catch (e) {
      log(`${msg.cmd} failed: ${e?.stack ?? e}`);
      reply({ ok: false, error: String(e?.message ?? e), ...(e?.extra ?? {}) });
    }
  });
});
rl.on('close', () => chain.then(() => shutdown(0)));
process.on('SIGTERM', () => shutdown(0));
process.on('unhandledRejection', (e) => log(`unhandled rejection: ${e?.stack ?? e}`));
log('ready');
