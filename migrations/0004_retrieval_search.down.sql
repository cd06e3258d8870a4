DROP FUNCTION retrieval.search(text, text, vector, jsonb, integer, integer, integer);
DROP SCHEMA retrieval;
