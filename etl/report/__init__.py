"""`qianfan-etl report`: `queries` reads the rows behind each chart (plain SQL, both backends);
`page` turns them into one self-contained HTML page (the `report` extra). Importing this package
imports neither."""
