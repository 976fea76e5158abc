-- conf/api.sql: the functions blitz serves as api.<name>, and the data they use.
--
--   psql -X -v ON_ERROR_STOP=1 [-v scale=N] -f conf/api.sql   (scripts/load-api.sh wraps this)
--
-- `make run` loads this file on every start, so it is idempotent and cheap
-- the second time: tables and indexes are created only when missing, data
-- is generated only into empty tables, functions are replaced in place.
-- It runs as one transaction, so a failed load leaves nothing half made, and
-- under a transaction-level advisory lock, so instances starting together
-- against one database load it one after another instead of racing.
--
-- What it provides:
--   public.pgbench_{branches,tellers,accounts,history}
--       the TPC-B tables exactly as `pgbench -i` makes them (same names,
--       columns, types, primary keys, fillfactor), filled at scale :scale
--       (default 1) when empty, so blitz and `pgbench -f` work on one data set.
--       Tables already filled (by an earlier load or by `pgbench -i -s M`)
--       are left alone, whatever their scale.
--   blitz_demo.{projects,datasets,images,annotations}
--       a tiny OMERO-like model with a few seed rows.
--   blitz_demo.notes and role blitz_users
--       the row-level security example (see "Identity" below).
--   blitz_api.transfer, create_dataset, annotate_image, list_project_images,
--   whoami, add_note, my_notes
--       the callable functions, each with a COMMENT the server shows in its
--       OpenRPC document.
-- Nothing here touches schema `blitz`: that belongs to the server itself.
--
-- The functions are SECURITY INVOKER (the default): with auth.set_role = true
-- the session user's own privileges on the tables apply, so grant them as
-- your deployment needs. Every table is schema-qualified in the bodies, so the
-- functions do not depend on the caller's search_path and need no
-- `SET search_path` clause (which would cost a GUC save/restore per call).
-- Errors raised on purpose use SQLSTATE P0002 (no_data_found) for an id that
-- does not exist and 22023 (invalid_parameter_value) / 22004
-- (null_value_not_allowed) for a bad argument; blitz passes them on as
-- -32010 with data.sqlstate.

\set QUIET on
\set ON_ERROR_STOP on

-- Scale: from `-v scale=N`, default 1. Checked on the server so a bad value
-- fails with a clear message before anything is created.
\if :{?scale}
\else
  \set scale 1
\endif

SET client_min_messages = warning;   -- no "already exists, skipping" notices

BEGIN;

SELECT set_config('blitz_api.load_scale', :'scale', true) AS load_scale \gset
DO $$
DECLARE
  s text := current_setting('blitz_api.load_scale');
BEGIN
  -- pgbench itself switches aid to bigint above scale 20000; stay below.
  IF s !~ '^[0-9]{1,5}$' OR s::int NOT BETWEEN 1 AND 20000 THEN
    RAISE EXCEPTION 'api.sql: scale must be an integer from 1 to 20000, got "%"', s
      USING ERRCODE = '22023';
  END IF;
  -- One loader at a time per database (released at COMMIT). The key is an
  -- arbitrary constant private to this file.
  PERFORM pg_advisory_xact_lock(7310842651120349001);
END $$;

CREATE SCHEMA IF NOT EXISTS blitz_api;
CREATE SCHEMA IF NOT EXISTS blitz_demo;
COMMENT ON SCHEMA blitz_api IS 'Functions callable through blitz as JSON-RPC methods api.<name>.';
COMMENT ON SCHEMA blitz_demo IS 'A small OMERO-like model (projects, datasets, images, annotations) used by the blitz_api demo functions.';

------------------------------------------------------------------------------
-- pgbench TPC-B tables
------------------------------------------------------------------------------
-- Same definitions as `pgbench -i` (PostgreSQL 15). The primary keys are
-- added after the first fill, as pgbench does, because building an index
-- once is much faster than maintaining it row by row.

CREATE TABLE IF NOT EXISTS public.pgbench_branches (
  bid      integer NOT NULL,
  bbalance integer,
  filler   character(88)
) WITH (fillfactor = 100);

CREATE TABLE IF NOT EXISTS public.pgbench_tellers (
  tid      integer NOT NULL,
  bid      integer,
  tbalance integer,
  filler   character(84)
) WITH (fillfactor = 100);

CREATE TABLE IF NOT EXISTS public.pgbench_accounts (
  aid      integer NOT NULL,
  bid      integer,
  abalance integer,
  filler   character(84)
) WITH (fillfactor = 100);

CREATE TABLE IF NOT EXISTS public.pgbench_history (
  tid    integer,
  bid    integer,
  aid    integer,
  delta  integer,
  mtime  timestamp without time zone,
  filler character(22)
);

-- Which tables need data. One probe row each: fast however large they are.
SELECT NOT EXISTS (SELECT 1 FROM public.pgbench_branches) AS fill_branches,
       NOT EXISTS (SELECT 1 FROM public.pgbench_tellers)  AS fill_tellers,
       NOT EXISTS (SELECT 1 FROM public.pgbench_accounts) AS fill_accounts
\gset

-- Row counts and values as `pgbench -i`: per scale unit 1 branch, 10
-- tellers, 100000 accounts; balances 0; account filler blank, the others NULL.
\if :fill_branches
  INSERT INTO public.pgbench_branches (bid, bbalance)
  SELECT b, 0 FROM generate_series(1, :'scale'::int) AS b;
\endif
\if :fill_tellers
  INSERT INTO public.pgbench_tellers (tid, bid, tbalance)
  SELECT t, (t - 1) / 10 + 1, 0 FROM generate_series(1, 10 * :'scale'::int) AS t;
\endif
\if :fill_accounts
  INSERT INTO public.pgbench_accounts (aid, bid, abalance, filler)
  SELECT a, (a - 1) / 100000 + 1, 0, '' FROM generate_series(1, 100000 * :'scale'::int) AS a;
\endif

-- Primary keys named as pgbench names them, added only where missing (also
-- mends tables made by `pgbench -i -I dtg`, which skips them). Only catalog
-- reads when they exist, so no lock is taken on a busy table.
DO $$
DECLARE
  t record;
BEGIN
  FOR t IN SELECT * FROM (VALUES ('pgbench_branches', 'bid'),
                                 ('pgbench_tellers',  'tid'),
                                 ('pgbench_accounts', 'aid')) AS v(tab, col)
  LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conrelid = format('public.%I', t.tab)::regclass AND contype = 'p') THEN
      EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I PRIMARY KEY (%I)',
                     t.tab, t.tab || '_pkey', t.col);
    END IF;
  END LOOP;
END $$;

-- Fresh statistics after a fill; nothing to do when the data was there.
\if :fill_branches
  ANALYZE public.pgbench_branches;
\endif
\if :fill_tellers
  ANALYZE public.pgbench_tellers;
\endif
\if :fill_accounts
  ANALYZE public.pgbench_accounts;
  ANALYZE public.pgbench_history;
\endif

------------------------------------------------------------------------------
-- blitz_api.transfer: pgbench's TPC-B transaction in one call
------------------------------------------------------------------------------
-- The same five statements, in the same order, as pgbench's built-in
-- "tpcb-like" script, so that `pgbench -f` calling this function and blitz
-- calling it do identical work. Parameters are referred to as transfer.<name>
-- because they share their names with columns.

CREATE OR REPLACE FUNCTION blitz_api.transfer(aid integer, tid integer, bid integer, delta integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
  balance integer;
BEGIN
  IF transfer.aid IS NULL OR transfer.tid IS NULL OR transfer.bid IS NULL OR transfer.delta IS NULL THEN
    RAISE EXCEPTION 'transfer: aid, tid, bid and delta must not be null'
      USING ERRCODE = '22004';
  END IF;

  UPDATE public.pgbench_accounts AS a SET abalance = a.abalance + transfer.delta
   WHERE a.aid = transfer.aid;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'transfer: account % does not exist', transfer.aid
      USING ERRCODE = 'P0002';
  END IF;

  SELECT a.abalance INTO balance FROM public.pgbench_accounts AS a WHERE a.aid = transfer.aid;

  UPDATE public.pgbench_tellers AS t SET tbalance = t.tbalance + transfer.delta
   WHERE t.tid = transfer.tid;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'transfer: teller % does not exist', transfer.tid
      USING ERRCODE = 'P0002';
  END IF;

  UPDATE public.pgbench_branches AS b SET bbalance = b.bbalance + transfer.delta
   WHERE b.bid = transfer.bid;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'transfer: branch % does not exist', transfer.bid
      USING ERRCODE = 'P0002';
  END IF;

  INSERT INTO public.pgbench_history (tid, bid, aid, delta, mtime)
  VALUES (transfer.tid, transfer.bid, transfer.aid, transfer.delta, LOCALTIMESTAMP);

  RETURN balance;
END
$$;

COMMENT ON FUNCTION blitz_api.transfer(integer, integer, integer, integer) IS
'pgbench''s TPC-B transaction in one call: adds delta to account aid, teller tid and branch bid, records the move in pgbench_history, and returns the account''s new balance (integer). Fails with SQLSTATE P0002 when the account, teller or branch does not exist (nothing is changed then), 22004 when an argument is null.';

------------------------------------------------------------------------------
-- blitz_demo: projects ⊃ datasets ⊃ images ← annotations
------------------------------------------------------------------------------
-- OMERO links projects to datasets and datasets to images many-to-many and
-- attaches annotations through link tables; this keeps the shape with plain
-- one-to-many foreign keys, which is all the demo functions need.

CREATE TABLE IF NOT EXISTS blitz_demo.projects (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name        text NOT NULL CHECK (btrim(name) <> ''),
  description text,
  owner_name  text NOT NULL DEFAULT current_user,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS blitz_demo.datasets (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project_id  bigint NOT NULL REFERENCES blitz_demo.projects (id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (btrim(name) <> ''),
  description text,
  owner_name  text NOT NULL DEFAULT current_user,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS blitz_demo.images (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  dataset_id  bigint NOT NULL REFERENCES blitz_demo.datasets (id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (btrim(name) <> ''),
  -- OMERO's Pixels dimensions: X, Y, focal planes, channels, timepoints.
  size_x      integer NOT NULL CHECK (size_x > 0),
  size_y      integer NOT NULL CHECK (size_y > 0),
  size_z      integer NOT NULL DEFAULT 1 CHECK (size_z > 0),
  size_c      integer NOT NULL DEFAULT 1 CHECK (size_c > 0),
  size_t      integer NOT NULL DEFAULT 1 CHECK (size_t > 0),
  pixels_type text NOT NULL DEFAULT 'uint16',
  acquired_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- OMERO's CommentAnnotation: free text with an optional namespace.
CREATE TABLE IF NOT EXISTS blitz_demo.annotations (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  image_id    bigint NOT NULL REFERENCES blitz_demo.images (id) ON DELETE CASCADE,
  text_value  text NOT NULL,
  ns          text,
  owner_name  text NOT NULL DEFAULT current_user,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- Indexes on the foreign keys, created only when missing: CREATE INDEX IF
-- NOT EXISTS would first take a SHARE lock on the table, which waits for
-- (and blocks) writers of a running server.
DO $$
BEGIN
  IF to_regclass('blitz_demo.datasets_project_id_idx') IS NULL THEN
    CREATE INDEX datasets_project_id_idx ON blitz_demo.datasets (project_id);
  END IF;
  IF to_regclass('blitz_demo.images_dataset_id_idx') IS NULL THEN
    CREATE INDEX images_dataset_id_idx ON blitz_demo.images (dataset_id);
  END IF;
  IF to_regclass('blitz_demo.annotations_image_id_idx') IS NULL THEN
    CREATE INDEX annotations_image_id_idx ON blitz_demo.annotations (image_id);
  END IF;
END $$;

-- Seed rows, only into an empty model (the first load).
DO $$
DECLARE
  p_mitosis bigint; p_neuron bigint;
  d_control bigint; d_treated bigint; d_cortex bigint;
  i_first bigint;
BEGIN
  IF EXISTS (SELECT 1 FROM blitz_demo.projects) THEN
    RETURN;
  END IF;

  INSERT INTO blitz_demo.projects (name, description)
  VALUES ('Mitosis screen', 'HeLa cells, live imaging of cell division')
  RETURNING id INTO p_mitosis;
  INSERT INTO blitz_demo.projects (name, description)
  VALUES ('Neuron morphology', 'Fixed cortical neurons, confocal stacks')
  RETURNING id INTO p_neuron;

  INSERT INTO blitz_demo.datasets (project_id, name, description)
  VALUES (p_mitosis, 'Control', 'Untreated wells') RETURNING id INTO d_control;
  INSERT INTO blitz_demo.datasets (project_id, name, description)
  VALUES (p_mitosis, 'Nocodazole 100 nM', 'Treated wells') RETURNING id INTO d_treated;
  INSERT INTO blitz_demo.datasets (project_id, name, description)
  VALUES (p_neuron, 'Cortex layer 5', NULL) RETURNING id INTO d_cortex;

  INSERT INTO blitz_demo.images (dataset_id, name, size_x, size_y, size_z, size_c, size_t, acquired_at)
  VALUES (d_control, 'well_A01.ome.tiff', 1024, 1024, 1, 3, 120, '2024-03-04 09:15:00+00')
  RETURNING id INTO i_first;
  INSERT INTO blitz_demo.images (dataset_id, name, size_x, size_y, size_z, size_c, size_t, acquired_at)
  VALUES (d_control,  'well_A02.ome.tiff', 1024, 1024,  1, 3, 120, '2024-03-04 09:40:00+00'),
         (d_treated,  'well_B01.ome.tiff', 1024, 1024,  1, 3, 120, '2024-03-04 10:05:00+00'),
         (d_treated,  'well_B02.ome.tiff', 1024, 1024,  1, 3, 120, '2024-03-04 10:30:00+00'),
         (d_cortex,   'neuron_001.czi',    2048, 2048, 45, 2,   1, '2024-05-11 14:00:00+00'),
         (d_cortex,   'neuron_002.czi',    2048, 2048, 52, 2,   1, '2024-05-11 14:20:00+00');

  INSERT INTO blitz_demo.annotations (image_id, text_value, ns)
  VALUES (i_first, 'Good focus throughout', NULL),
         (i_first, 'prophase at t=12',      'openmicroscopy.org/omero/demo/phase');
END $$;

------------------------------------------------------------------------------
-- blitz_demo functions
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION blitz_api.create_dataset(project_id bigint, name text, description text DEFAULT NULL)
RETURNS blitz_demo.datasets
LANGUAGE plpgsql
AS $$
DECLARE
  created blitz_demo.datasets;
BEGIN
  IF create_dataset.name IS NULL OR btrim(create_dataset.name) = '' THEN
    RAISE EXCEPTION 'create_dataset: name must not be empty'
      USING ERRCODE = '22023';
  END IF;

  -- Insert only if the project exists, in one statement; the foreign key
  -- keeps the project from vanishing before commit.
  INSERT INTO blitz_demo.datasets (project_id, name, description)
  SELECT p.id, btrim(create_dataset.name), create_dataset.description
    FROM blitz_demo.projects AS p
   WHERE p.id = create_dataset.project_id
  RETURNING * INTO created;

  IF NOT FOUND THEN
    RAISE EXCEPTION 'create_dataset: project % does not exist', create_dataset.project_id
      USING ERRCODE = 'P0002';
  END IF;
  RETURN created;
END
$$;

COMMENT ON FUNCTION blitz_api.create_dataset(bigint, text, text) IS
'Creates a dataset in project project_id and returns it as an object {id, project_id, name, description, owner_name, created_at}. The name is trimmed and must not be empty (SQLSTATE 22023); description is optional. Fails with SQLSTATE P0002 when the project does not exist.';

CREATE OR REPLACE FUNCTION blitz_api.annotate_image(image_id bigint, text text)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  annotation_id bigint;
BEGIN
  IF annotate_image.text IS NULL OR btrim(annotate_image.text) = '' THEN
    RAISE EXCEPTION 'annotate_image: text must not be empty'
      USING ERRCODE = '22023';
  END IF;

  INSERT INTO blitz_demo.annotations (image_id, text_value)
  SELECT i.id, annotate_image.text
    FROM blitz_demo.images AS i
   WHERE i.id = annotate_image.image_id
  RETURNING id INTO annotation_id;

  IF NOT FOUND THEN
    RAISE EXCEPTION 'annotate_image: image % does not exist', annotate_image.image_id
      USING ERRCODE = 'P0002',
            HINT = 'list_project_images lists the images of a project';
  END IF;
  RETURN annotation_id;
END
$$;

COMMENT ON FUNCTION blitz_api.annotate_image(bigint, text) IS
'Attaches a comment annotation with the given text to image image_id and returns the new annotation''s id (bigint). Fails with SQLSTATE P0002 when the image does not exist, 22023 when the text is empty.';

CREATE OR REPLACE FUNCTION blitz_api.list_project_images(project_id bigint)
RETURNS TABLE (image_id bigint, image_name text, dataset_name text, annotation_count bigint)
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
  -- An unknown project is an error; a project without images is an empty list.
  IF NOT EXISTS (SELECT 1 FROM blitz_demo.projects AS p WHERE p.id = list_project_images.project_id) THEN
    RAISE EXCEPTION 'list_project_images: project % does not exist', list_project_images.project_id
      USING ERRCODE = 'P0002';
  END IF;

  RETURN QUERY
  SELECT i.id, i.name, d.name,
         (SELECT count(*) FROM blitz_demo.annotations AS a WHERE a.image_id = i.id)
    FROM blitz_demo.datasets AS d
    JOIN blitz_demo.images AS i ON i.dataset_id = d.id
   WHERE d.project_id = list_project_images.project_id
   ORDER BY d.name, i.name, i.id;
END
$$;

COMMENT ON FUNCTION blitz_api.list_project_images(bigint) IS
'Lists the images in every dataset of project project_id, ordered by dataset then image name: an array of {image_id, image_name, dataset_name, annotation_count}, empty when the project has no images. Fails with SQLSTATE P0002 when the project does not exist.';

------------------------------------------------------------------------------
-- Identity: who is calling, and row-level security per user
------------------------------------------------------------------------------
-- blitz runs every api call inside the caller's session: the function sees
-- current_setting('blitz.user') (the session's user name), and with
-- auth.set_role = true the call runs under SET LOCAL ROLE <user>, so GRANTs
-- and row-level security apply. For that, each blitz user needs a
-- PostgreSQL role of the same name that the server's database user may
-- switch to, e.g. for users alice and bob:
--
--   CREATE ROLE alice NOLOGIN IN ROLE blitz_users;
--   CREATE ROLE bob   NOLOGIN IN ROLE blitz_users;
--   GRANT alice, bob TO <the user in db.url>;   -- not needed for a superuser
--
-- blitz_demo.notes is the example: each user sees and writes only their own
-- rows (the policy compares owner_name with current_user, the role set by
-- blitz). Without auth.set_role the calls run as the server's database user;
-- a superuser or the table's owner is not subject to the policy.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'blitz_users') THEN
    CREATE ROLE blitz_users NOLOGIN;
  END IF;
END $$;
GRANT USAGE ON SCHEMA blitz_api, blitz_demo TO blitz_users;

CREATE TABLE IF NOT EXISTS blitz_demo.notes (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  owner_name  text NOT NULL DEFAULT current_user,
  body        text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE blitz_demo.notes ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS notes_own_rows ON blitz_demo.notes;
CREATE POLICY notes_own_rows ON blitz_demo.notes
  USING (owner_name = current_user)
  WITH CHECK (owner_name = current_user);
GRANT SELECT, INSERT, DELETE ON blitz_demo.notes TO blitz_users;

CREATE OR REPLACE FUNCTION blitz_api.whoami()
RETURNS json
LANGUAGE sql
STABLE
AS $$
  SELECT json_build_object('user', current_setting('blitz.user', true),
                           'role', current_user::text)
$$;

COMMENT ON FUNCTION blitz_api.whoami() IS
'The caller as the database sees it: {user: the blitz session''s user (current_setting(''blitz.user'')), role: current_user (the user''s own role when auth.set_role is on)}.';

CREATE OR REPLACE FUNCTION blitz_api.add_note(body text)
RETURNS bigint
LANGUAGE sql
AS $$
  INSERT INTO blitz_demo.notes (body) VALUES (add_note.body) RETURNING id
$$;

COMMENT ON FUNCTION blitz_api.add_note(text) IS
'Adds a note owned by the caller''s role and returns its id. Row-level security (with auth.set_role on) keeps each user to their own notes.';

CREATE OR REPLACE FUNCTION blitz_api.my_notes()
RETURNS TABLE (id bigint, owner_name text, body text)
LANGUAGE sql
STABLE
AS $$
  SELECT n.id, n.owner_name, n.body FROM blitz_demo.notes AS n ORDER BY n.id
$$;

COMMENT ON FUNCTION blitz_api.my_notes() IS
'The notes the caller may see: with auth.set_role on, only their own (row-level security on blitz_demo.notes).';

COMMIT;

------------------------------------------------------------------------------
-- One line saying what is there now.
------------------------------------------------------------------------------
SELECT (SELECT count(*) FROM public.pgbench_branches) AS pgbench_scale,
       (SELECT count(*) FROM pg_catalog.pg_proc
         WHERE pronamespace = 'blitz_api'::regnamespace) AS api_functions,
       (SELECT count(*) FROM blitz_demo.projects) AS demo_projects,
       (SELECT count(*) FROM blitz_demo.images) AS demo_images
\gset
\if :fill_accounts
  \set pgbench_state 'generated now'
\else
  \set pgbench_state 'already present'
\endif
\set summary 'api.sql: blitz_api has ' :api_functions ' functions; pgbench tables at scale ' :pgbench_scale ' (' :pgbench_state '); blitz_demo has ' :demo_projects ' projects, ' :demo_images ' images'
\echo :summary
