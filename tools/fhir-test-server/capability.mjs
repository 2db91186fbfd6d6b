// CapabilityStatement for GET [base]/metadata (Medplum's router has no /metadata route).
import { globalSchema } from '@medplum/core';
import { R4_RESOURCE_TYPES } from './validation.mjs';

const TYPE_INTERACTIONS = ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'].map(
  (code) => ({ code })
);

/**
 * @param {string} baseUrl
 * @param {{ maxStrictEntries: number | undefined, checkReferences: boolean, fhirVersion?: string, r5?: boolean }} settings
 */
export function buildCapabilityStatement(baseUrl, settings) {
  const resource = [...R4_RESOURCE_TYPES].sort().map((type) => {
    const searchParams = Object.entries(globalSchema.types[type]?.searchParams ?? {})
      .filter(([, sp]) => sp.type && !sp.url?.startsWith('https://medplum.com'))
      .map(([name, sp]) => ({ name, definition: sp.url, type: sp.type }))
      .sort((a, b) => a.name.localeCompare(b.name));
    return {
      type,
      interaction: type === 'Binary' ? TYPE_INTERACTIONS.filter((i) => i.code !== 'search-type') : TYPE_INTERACTIONS,
      versioning: 'versioned',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: type !== 'Binary',
      conditionalUpdate: type !== 'Binary',
      conditionalDelete: 'single',
      referencePolicy: ['literal', 'local'],
      searchParam: type === 'Binary' ? undefined : searchParams.length ? searchParams : undefined,
      operation: [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
    };
  });
  const limit = settings.maxStrictEntries
    ? ` Transactions with a conditional entry are limited to ${settings.maxStrictEntries} entries.`
    : '';
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'fhirimg-fhir-test-server (Medplum fhir-router, in memory)' },
    implementation: { description: description(settings) + limit, url: baseUrl },
    fhirVersion: settings.fhirVersion ?? '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        resource,
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        operation: [{ name: 'validate', definition: 'http://hl7.org/fhir/OperationDefinition/Resource-validate' }],
      },
    ],
  };
}

function description(settings) {
  return settings.r5
    ? 'In-memory FHIR 5.0.0 test server (R5 mode: transaction semantics only, no R5 schema validation).'
    : 'Strict in-memory FHIR R4 test server.';
}
