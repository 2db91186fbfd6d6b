"""Test servers and their self-tests: the strict FHIR server, Orthanc, and a fault-injecting proxy.

The harnesses (``fhir_server``, ``orthanc_server``, ``faultproxy``) start and drive real servers on
loopback; the ``test_*`` modules beside them check that each server is as strict as the tests built
on it assume. A package, so they import as ``tests.servers.<module>`` with no ``sys.path`` edits.
"""
