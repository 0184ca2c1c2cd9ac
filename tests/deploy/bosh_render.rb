# Renders every template of a BOSH job the way the director does, closely enough to catch
# template and property errors: `p`, `if_p`, `link`, `if_link` and `spec` over the job spec's
# defaults and a manifest's properties.
#
#   ruby bosh_render.rb JOB_DIR PROPERTIES.yml OUT_DIR [LINKS.yml]
#
# PROPERTIES.yml holds the instance group job's `properties:` (nested); LINKS.yml maps a link
# name to the properties its provider shares. Each template is written under OUT_DIR at its
# target path; a template that raises stops the run with the property named.
require 'erb'
require 'ostruct'
require 'yaml'
require 'fileutils'

job_dir, props_file, out_dir, links_file = ARGV
abort "usage: bosh_render.rb JOB_DIR PROPERTIES.yml OUT_DIR [LINKS.yml]" unless out_dir

spec = YAML.safe_load(File.read(File.join(job_dir, 'spec')))
manifest = YAML.safe_load(File.read(props_file)) || {}
links = links_file ? (YAML.safe_load(File.read(links_file)) || {}) : {}

# Looks a dotted name up in nested properties.
def dig(props, name)
  name.split('.').reduce(props) do |node, key|
    return [false, nil] unless node.is_a?(Hash) && node.key?(key)
    node[key]
  end.then { |v| [true, v] }
end

class Properties
  def initialize(spec_props, manifest)
    @spec = spec_props || {}
    @manifest = manifest
  end

  def lookup(name)
    found, value = dig(@manifest, name)
    return [true, value] if found
    raise "#{name} is not a property of this job" unless @spec.key?(name)
    return [true, @spec[name]['default']] if @spec[name].key?('default')
    [false, nil]
  end
end

class Link
  def initialize(name, props)
    @name = name
    @props = props
  end

  def p(name, *default)
    found, value = dig(@props, name)
    return value if found
    return default.first unless default.empty?
    raise "link #{@name} shares no property #{name}"
  end
end

class Job
  def initialize(properties, links, spec)
    @properties = properties
    @links = links
    @consumed = spec.fetch('consumes', []).map { |c| c['name'] }
    @spec = OpenStruct.new(
      id: 'a1b2c3d4-0000-4000-8000-00000000000c', name: spec['name'], index: 0,
      address: '10.0.1.7', ip: '10.0.1.7', deployment: 'cf', az: 'z1', bootstrap: true
    )
  end

  attr_reader :spec

  def p(name, *default)
    found, value = @properties.lookup(name)
    return value if found && !value.nil?
    return default.first unless default.empty?
    raise "property #{name} is required (no default, and the manifest does not set it)"
  end

  def if_p(*names)
    values = names.map do |n|
      found, value = @properties.lookup(n)
      return ActiveElse.new(false) unless found && !value.nil?
      value
    end
    yield(*values)
    ActiveElse.new(true)
  end

  def link(name)
    raise "job consumes no link #{name}" unless @consumed.include?(name)
    raise "link #{name} is not provided" unless @links.key?(name)
    Link.new(name, @links[name])
  end

  def if_link(name)
    raise "job consumes no link #{name}" unless @consumed.include?(name)
    return ActiveElse.new(false) unless @links.key?(name)
    yield Link.new(name, @links[name])
    ActiveElse.new(true)
  end

  def get_binding
    binding
  end
end

# What `if_p` and `if_link` return, for their `.else` blocks.
class ActiveElse
  def initialize(done)
    @done = done
  end

  def else
    yield unless @done
  end
end

job = Job.new(Properties.new(spec['properties'], manifest), links, spec)
spec.fetch('templates').each do |source, target|
  text = File.read(File.join(job_dir, 'templates', source))
  rendered = begin
    ERB.new(text, trim_mode: '-').result(job.get_binding)
  rescue StandardError => e
    abort "#{spec['name']}/#{source}: #{e.message}"
  end
  path = File.join(out_dir, target)
  FileUtils.mkdir_p(File.dirname(path))
  File.write(path, rendered)
end
puts "rendered #{spec['templates'].size} templates of #{spec['name']}"
