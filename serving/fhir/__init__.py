"""FHIR R4 in and out: `serving.fhir.inbound` reads a Bundle of QuestionnaireResponses and
Observations into the service's request; `serving.fhir.outbound` writes assessments as
RiskAssessments and safety Flags, and problems as an OperationOutcome. One mapping, read from
the instrument registry (LOINC panel, total, item and answer codes; OnTrack's own canonical URL
and CodeSystem for instruments LOINC does not cover). docs/ehr.md."""
