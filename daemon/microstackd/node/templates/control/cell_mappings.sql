-- Nova's cell mappings hold the URLs of each cell's database and message
-- queue, passwords included (nova-manage cell_v2 wrote them at init from
-- nova.conf): rotate-secrets points them at the current ones (idempotent).
UPDATE nova_api.cell_mappings SET database_connection = '${db_base_url}/nova_cell0?charset=utf8'
  WHERE uuid = '00000000-0000-0000-0000-000000000000';
UPDATE nova_api.cell_mappings
  SET database_connection = '${db_base_url}/nova?charset=utf8', transport_url = '${transport_url}'
  WHERE name = 'cell1';
