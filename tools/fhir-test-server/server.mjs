// Strict in-memory FHIR R4 server for the fhirimg test suite. See README.md for what it enforces.
//
//   node server.mjs [--port N] [--max-strict-entries N] [--no-check-references] [--max-body-mb N]
//                   [--fhir-version 4.0.1|5.0.0]
//
// Prints "LISTENING http://127.0.0.1:<port>/fhir/R4" on stdout once it accepts requests (/fhir/R5
// with --fhir-version 5.0.0: R5 mode, transaction semantics only, no schema validation).
import { createServer } from 'node:http';
import { getStatus, globalSchema, isOk, normalizeOperationOutcome, OperationOutcomeError } from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import { buildCapabilityStatement } from './capability.mjs';
import { collectReferences, StrictRepository } from './strict-repository.mjs';
import { collectIssues, loadDefinitions, R4_RESOURCE_TYPES } from './validation.mjs';

export const BASE_PATH = '/fhir/R4';
// R5 mode (--fhir-version 5.0.0): the same engine announcing FHIR 5.0.0, under its own base path.
export const R5_BASE_PATH = '/fhir/R5';
const FHIR_VERSIONS = ['4.0.1', '5.0.0'];
const HOST = '127.0.0.1';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
// Result parameters (http://hl7.org/fhir/R4/search.html#return); other parameters must be defined
// SearchParameters of the type, as on HAPI, which rejects unknown ones with 400.
const SEARCH_CONTROL_PARAMS = new Set(['_count', '_offset', '_sort', '_summary', '_total', '_elements', '_include', '_revinclude', '_format', '_pretty']);
const STATUS_TEXT = { 200: 'OK', 201: 'Created', 204: 'No Content', 304: 'Not Modified' };

function parseSettings(argv, env) {
  const settings = {
    port: Number(env.FHIR_TEST_SERVER_PORT ?? 0),
    maxStrictEntries: env.FHIR_TEST_SERVER_MAX_STRICT_ENTRIES ? Number(env.FHIR_TEST_SERVER_MAX_STRICT_ENTRIES) : undefined,
    checkReferences: env.FHIR_TEST_SERVER_CHECK_REFERENCES !== '0',
    maxBodyBytes: Number(env.FHIR_TEST_SERVER_MAX_BODY_MB ?? 512) * 1024 * 1024,
    fhirVersion: env.FHIR_TEST_SERVER_FHIR_VERSION || '4.0.1',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined || !/^\d+$/.test(v)) {
        throw new Error(`${arg} needs a non-negative integer`);
      }
      return Number(v);
    };
    if (arg === '--port') {
      settings.port = next();
    } else if (arg === '--max-strict-entries') {
      settings.maxStrictEntries = next() || undefined;
    } else if (arg === '--no-check-references') {
      settings.checkReferences = false;
    } else if (arg === '--max-body-mb') {
      settings.maxBodyBytes = next() * 1024 * 1024;
    } else if (arg === '--fhir-version') {
      settings.fhirVersion = argv[++i];
    } else {
      throw new Error(`Unknown argument ${arg}`);
    }
  }
  if (!FHIR_VERSIONS.includes(settings.fhirVersion)) {
    throw new Error(`--fhir-version must be one of ${FHIR_VERSIONS.join(', ')}, not ${settings.fhirVersion}`);
  }
  // R5 mode: Medplum's definitions are R4, so its schema validation would refuse R5 resources
  // (ImagingStudy.modality as CodeableConcept, ...). Only transaction semantics are checked.
  settings.r5 = settings.fhirVersion.startsWith('5.');
  settings.basePath = settings.r5 ? R5_BASE_PATH : BASE_PATH;
  return settings;
}

function outcome(status, code, text, expression) {
  const ids = { 400: 'bad-request', 404: 'not-found', 405: 'method-not-allowed', 413: 'too-large', 415: 'unsupported' };
  return {
    status,
    body: {
      resourceType: 'OperationOutcome',
      id: ids[status],
      issue: [{ severity: status >= 400 ? 'error' : 'information', code, details: { text }, ...(expression ? { expression: [expression] } : {}) }],
    },
  };
}

function errorResponse(err) {
  const oo = err instanceof OperationOutcomeError ? err.outcome : normalizeOperationOutcome(err);
  return { status: getStatus(oo), body: oo };
}

/** Serialises all work on the store: transactions snapshot and restore it, so none may interleave. */
class Mutex {
  #tail = Promise.resolve();
  run(fn) {
    const result = this.#tail.then(fn);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}

function isFhirJson(contentType) {
  const mime = (contentType ?? '').split(';')[0].trim().toLowerCase();
  return mime === '' || mime === 'application/fhir+json' || mime === 'application/json' || mime === 'application/json+fhir';
}

function wantsFhirJson(accept, query) {
  if (query.get('_format')) {
    return true;
  }
  const a = (accept ?? '').toLowerCase();
  return a.includes('application/fhir+json') || a.includes('application/json');
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(Object.assign(new Error(`Request body exceeds ${limit} bytes`), { tooLarge: true }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Checks Medplum's batch processor does not do (or does only in its limited transaction mode). */
function checkTransactionBundle(bundle, settings) {
  const entries = bundle.entry ?? [];
  if (!entries.length) {
    return outcome(400, 'invalid', 'Transaction has no entries', 'Bundle.entry');
  }
  const fullUrls = new Set();
  for (const [i, e] of entries.entries()) {
    if (!e?.request?.method || !e.request.url) {
      return outcome(400, 'required', 'Entry has no request.method or request.url', `Bundle.entry[${i}].request`);
    }
    if (e.fullUrl) {
      if (fullUrls.has(e.fullUrl)) {
        return outcome(400, 'invalid', `Duplicate fullUrl ${e.fullUrl}`, `Bundle.entry[${i}].fullUrl`);
      }
      fullUrls.add(e.fullUrl);
    }
  }
  for (const [i, e] of entries.entries()) {
    for (const ref of collectReferences(e.resource ?? {})) {
      if (ref.startsWith('urn:uuid:') && !fullUrls.has(ref)) {
        return outcome(400, 'not-found', `Reference ${ref} does not match any fullUrl in the transaction`, `Bundle.entry[${i}].resource`);
      }
    }
  }
  if (settings.maxStrictEntries) {
    const strict = entries.some(
      (e) =>
        (e.request.method === 'POST' && e.request.ifNoneExist) ||
        (['PUT', 'DELETE', 'PATCH'].includes(e.request.method) && e.request.url.includes('?'))
    );
    if (strict && entries.length > settings.maxStrictEntries) {
      return outcome(
        400,
        'too-costly',
        `Transaction requires strict isolation but has too many entries (${entries.length} > ${settings.maxStrictEntries})`,
        'Bundle.entry'
      );
    }
  }
  return undefined;
}

export function startServer(settings) {
  loadDefinitions();
  let baseUrl = '';
  const repo = new StrictRepository({
    checkReferences: settings.checkReferences,
    baseUrl: () => baseUrl,
    validate: !settings.r5,
  });
  const basePath = settings.basePath;
  const router = new FhirRouter();
  const mutex = new Mutex();
  // Medplum's own transaction mode caps strict bundles at 8 entries and 50 updates; we run every
  // bundle in its batch mode and make transactions atomic ourselves (snapshot + restore).
  const config = { transactions: false };

  function decorateEntryResponse(entry) {
    const r = entry?.response;
    if (!r) {
      return;
    }
    const code = Number(r.status);
    r.status = STATUS_TEXT[code] ? `${code} ${STATUS_TEXT[code]}` : String(code);
    const res = entry.resource;
    if (res?.id && res.meta?.versionId && code < 300) {
      r.location = `${res.resourceType}/${res.id}/_history/${res.meta.versionId}`;
      r.etag = `W/"${res.meta.versionId}"`;
      r.lastModified = res.meta.lastUpdated;
      entry.fullUrl = `${baseUrl}/${res.resourceType}/${res.id}`;
    }
    if (code < 300) {
      delete r.outcome;
    }
  }

  function resourceResponse(fhirOutcome, resource, req, query) {
    const status = getStatus(fhirOutcome);
    if (status >= 400 || !resource) {
      return { status, body: fhirOutcome };
    }
    const headers = {};
    if (resource.meta?.versionId && resource.resourceType !== 'Bundle') {
      headers.ETag = `W/"${resource.meta.versionId}"`;
      if (resource.meta.lastUpdated) {
        headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
      }
      if (status === 201) {
        headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
      }
    }
    if (resource.resourceType === 'Bundle' && resource.type === 'searchset') {
      for (const e of resource.entry ?? []) {
        e.fullUrl = `${baseUrl}/${e.resource.resourceType}/${e.resource.id}`;
      }
      if (query.get('_summary') === 'count') {
        delete resource.entry;
      }
      resource.link = [{ relation: 'self', url: `${baseUrl}${req.url.slice(basePath.length)}` }];
    }
    if (resource.resourceType === 'Bundle' && /-response$/.test(resource.type ?? '')) {
      resource.entry?.forEach(decorateEntryResponse);
    }
    const prefer = String(req.headers.prefer ?? '');
    if (/return=minimal/.test(prefer) && ['POST', 'PUT', 'PATCH'].includes(req.method)) {
      return { status, headers, body: undefined };
    }
    if (/return=OperationOutcome/i.test(prefer) && ['POST', 'PUT', 'PATCH'].includes(req.method)) {
      return { status, headers, body: fhirOutcome };
    }
    return { status, headers, body: resource };
  }

  async function route(method, relUrl, body, req) {
    return router.handleRequest(
      { method, url: relUrl, pathname: '', body, params: {}, query: {}, headers: req.headers, config },
      repo
    );
  }

  async function transaction(bundle, req, query) {
    const rejected = checkTransactionBundle(bundle, settings);
    if (rejected) {
      return rejected;
    }
    const newTargets = bundle.entry.map((e) => {
      const m = e.request.method === 'PUT' && /^([A-Za-z]+)\/([^/?]+)$/.exec(e.request.url);
      return Boolean(m) && isNew(m[1], m[2]);
    });
    const snap = repo.snapshot();
    repo.beginDeferredReferenceCheck();
    try {
      const [fhirOutcome, result] = await route('POST', '', bundle, req);
      if (!isOk(fhirOutcome)) {
        throw new OperationOutcomeError(fhirOutcome);
      }
      for (const [i, e] of (result.entry ?? []).entries()) {
        if (!e?.response || Number(e.response.status) >= 400) {
          const oo = e?.response?.outcome ?? outcome(500, 'exception', 'Entry was not processed').body;
          for (const iss of oo.issue ?? []) {
            iss.diagnostics = `Bundle.entry[${i}] (${bundle.entry[i].request.method} ${bundle.entry[i].request.url})`;
          }
          throw new OperationOutcomeError(oo);
        }
      }
      await repo.endDeferredReferenceCheck();
      result.entry?.forEach((e, i) => {
        if (newTargets[i] && String(e.response.status) === '200') {
          e.response.status = '201';
        }
      });
      return resourceResponse(fhirOutcome, result, req, query);
    } catch (err) {
      repo.cancelDeferredReferenceCheck();
      repo.restore(snap);
      return errorResponse(err);
    }
  }

  function validateOperation(segments, parsed) {
    let resource = parsed;
    if (parsed?.resourceType === 'Parameters') {
      resource = parsed.parameter?.find((p) => p.name === 'resource')?.resource;
    }
    // R5 mode: the R4 schema would misjudge R5 resources; only the transaction checks apply.
    const issues = settings.r5 ? [] : collectIssues(resource);
    const type = segments.length > 1 ? segments[0] : undefined;
    if (type && resource?.resourceType && resource.resourceType !== type) {
      issues.push({ severity: 'error', code: 'invalid', details: { text: `Expected a ${type}, got ${resource.resourceType}` } });
    }
    if (resource?.resourceType === 'Bundle' && resource.type === 'transaction' && !issues.length) {
      const rejected = checkTransactionBundle(resource, { maxStrictEntries: undefined });
      if (rejected) {
        issues.push(...rejected.body.issue);
      }
    }
    const ok = [{ severity: 'information', code: 'informational', details: { text: 'All OK' } }];
    return { status: 200, body: { resourceType: 'OperationOutcome', issue: issues.length ? issues : ok } };
  }

  async function rawBinary(method, segments, body, req) {
    const resource = {
      resourceType: 'Binary',
      contentType: String(req.headers['content-type']),
      data: body.length ? body.toString('base64') : undefined,
    };
    const sc = req.headers['x-security-context'];
    if (sc) {
      resource.securityContext = { reference: String(sc) };
    }
    if (method === 'PUT') {
      resource.id = segments[1];
      return route('PUT', `Binary/${segments[1]}`, resource, req);
    }
    return route('POST', 'Binary', resource, req);
  }

  /** Update-as-create answers 201 (http.html#upsert); MemoryRepository reports it as a plain update. */
  function isNew(type, id) {
    return !repo.resources.get(type)?.has(id);
  }

  function markCreated(reply, wasNew) {
    if (wasNew && reply.status === 200) {
      reply.status = 201;
      const r = reply.body;
      if (r?.meta?.versionId) {
        reply.headers = { ...reply.headers, Location: `${baseUrl}/${r.resourceType}/${r.id}/_history/${r.meta.versionId}` };
      }
    }
    return reply;
  }

  async function dispatch(req, body, url) {
    const rel = url.pathname.slice(basePath.length).replace(/^\/+/, '');
    const segments = rel.split('/').filter(Boolean).map(decodeURIComponent);
    const relUrl = segments.join('/') + url.search;
    const method = req.method;
    const query = url.searchParams;

    if (method === 'GET' && rel === 'metadata') {
      return { status: 200, body: buildCapabilityStatement(baseUrl, settings) };
    }
    if (method === 'POST' && rel === '$reset') {
      repo.clear();
      return outcome(200, 'informational', 'Store emptied');
    }
    if (segments[0] && !R4_RESOURCE_TYPES.has(segments[0]) && !segments[0].startsWith('$')) {
      return outcome(404, 'not-supported', `Unknown resource type ${segments[0]}`);
    }
    const contentType = req.headers['content-type'];
    if (segments[0] === 'Binary' && body.length && !isFhirJson(contentType)) {
      if ((method === 'POST' && segments.length === 1) || (method === 'PUT' && segments.length === 2)) {
        const wasNew = method === 'PUT' && isNew('Binary', segments[1]);
        const [o, r] = await rawBinary(method, segments, body, req);
        return markCreated(resourceResponse(o, r, req, query), wasNew);
      }
    }
    if (segments[0] === 'Binary' && segments.length === 2 && method === 'GET' && !wantsFhirJson(req.headers.accept, query)) {
      const [o, r] = await route('GET', relUrl, undefined, req);
      if (!isOk(o)) {
        return { status: getStatus(o), body: o };
      }
      const headers = { 'Content-Type': r.contentType, ETag: `W/"${r.meta.versionId}"` };
      if (r.securityContext?.reference) {
        headers['X-Security-Context'] = r.securityContext.reference;
      }
      return { status: 200, headers, raw: Buffer.from(r.data ?? '', 'base64') };
    }

    if (method === 'GET' && segments.length === 1 && !segments[0].startsWith('$')) {
      const known = globalSchema.types[segments[0]]?.searchParams ?? {};
      for (const key of query.keys()) {
        const name = key.split(':')[0].split('.')[0];
        if (!SEARCH_CONTROL_PARAMS.has(name) && !(name in known)) {
          return outcome(400, 'not-supported', `Unknown search parameter "${key}" for ${segments[0]}`);
        }
      }
    }

    let parsed;
    if (body.length) {
      if (!isFhirJson(contentType)) {
        return outcome(415, 'not-supported', `Unsupported Content-Type ${contentType}; use application/fhir+json`);
      }
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch (err) {
        return outcome(400, 'structure', `Body is not valid JSON: ${err.message}`);
      }
    } else if (['POST', 'PUT'].includes(method)) {
      return outcome(400, 'required', 'Request body is empty');
    }

    if (method === 'POST' && segments.at(-1) === '$validate') {
      return validateOperation(segments, parsed);
    }
    if (method === 'POST' && segments.length === 0) {
      if (parsed?.resourceType !== 'Bundle') {
        return outcome(400, 'invalid', 'POST to the base URL needs a Bundle');
      }
      const bundleIssues = settings.r5 ? [] : collectIssues({ ...parsed, entry: undefined });
      if (bundleIssues.length) {
        return errorResponse(new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: bundleIssues }));
      }
      if (parsed.type === 'transaction') {
        return transaction(parsed, req, query);
      }
      if (parsed.type !== 'batch') {
        return outcome(400, 'invalid', `Bundle.type must be transaction or batch, not ${parsed.type}`, 'Bundle.type');
      }
    }
    const wasNew = method === 'PUT' && segments.length === 2 && isNew(segments[0], segments[1]);
    const [o, r] = await route(method, relUrl, parsed, req);
    return markCreated(resourceResponse(o, r, req, query), wasNew);
  }

  function send(res, reply) {
    const headers = { ...(reply.headers ?? {}) };
    let payload;
    if (reply.raw) {
      payload = reply.raw;
    } else if (reply.body !== undefined) {
      payload = Buffer.from(JSON.stringify(reply.body), 'utf8');
      headers['Content-Type'] = FHIR_JSON;
    }
    if (payload) {
      headers['Content-Length'] = payload.length;
    }
    res.writeHead(reply.status, headers);
    res.end(payload);
  }

  const server = createServer(async (req, res) => {
    const started = Date.now();
    let reply;
    try {
      const url = new URL(req.url, `http://${HOST}`);
      if (url.pathname !== basePath && !url.pathname.startsWith(basePath + '/')) {
        reply = outcome(404, 'not-found', `No FHIR endpoint here; the base is ${basePath}`);
      } else {
        const body = await readBody(req, settings.maxBodyBytes);
        reply = await mutex.run(() => dispatch(req, body, url));
      }
    } catch (err) {
      reply = err?.tooLarge ? outcome(413, 'too-costly', err.message) : errorResponse(err);
      if (!err?.tooLarge && !(err instanceof OperationOutcomeError)) {
        process.stderr.write(`${err?.stack ?? err}\n`);
      }
    }
    if (!res.destroyed) {
      send(res, reply);
    }
    process.stderr.write(`${req.method} ${req.url} ${reply.status} ${Date.now() - started}ms\n`);
  });
  server.requestTimeout = 10 * 60 * 1000;
  server.listen(settings.port, HOST, () => {
    baseUrl = `http://${HOST}:${server.address().port}${basePath}`;
    process.stdout.write(`LISTENING ${baseUrl}\n`);
  });
  return server;
}

const settings = parseSettings(process.argv.slice(2), process.env);
const server = startServer(settings);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
