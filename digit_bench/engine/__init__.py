"""The engine: the artifact DAG (dag.py), job launching (launch.py) and result rows (rows.py)."""
